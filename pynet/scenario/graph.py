"""``pynet scenario graph``: the topology as a picture.

Graphviz's ``dot`` (Debian package ``graphviz``) lays it out when present:
it is the standard tool, handles any size, and writes SVG and PNG.  A pip
wrapper (``graphviz`` on PyPI) would still need the same binary, so pynet
calls ``dot`` directly and adds no Python dependency.  Without ``dot``, SVG is
written by a small built-in layout (hosts as columns); PNG needs ``dot``.

Addresses not fixed by the scenario are shown as pynet's IPAM will hand them
out for a fresh pool (gateway first, then sandboxes in order), marked ``~``.
"""
from __future__ import annotations

import html
import ipaddress
import shutil
import subprocess

from pynet.scenario.model import Scenario


def planned_addresses(scn: Scenario) -> dict:
    """{(host, net): {"gateway": addr, sandbox: addr}}; "~" marks a planned one."""
    out = {}
    for h in scn.hosts.values():
        for n in h.networks.values():
            d = {}
            if not n.subnet:
                out[(h.name, n.name)] = {"gateway": "~ipam"}
                for sb in h.sandboxes.values():
                    for a in sb.attachments:
                        if a.network == n.name:
                            d[sb.name] = a.address or "~ipam"
                out[(h.name, n.name)].update(d)
                continue
            net = ipaddress.ip_network(n.subnet)
            fixed = {a.address for sb in h.sandboxes.values() for a in sb.attachments
                     if a.network == n.name and a.address}
            free = (str(a) for a in net.hosts() if str(a) not in fixed)
            gw = n.gateway or next(free)
            d["gateway"] = gw if n.gateway else "~" + gw
            for sb in h.sandboxes.values():
                for a in sb.attachments:
                    if a.network == n.name:
                        if a.address:
                            d[sb.name] = a.address
                        else:
                            x = next(free)
                            while x == gw:
                                x = next(free)
                            d[sb.name] = "~" + x
            out[(h.name, n.name)] = d
    return out


def _q(s: str) -> str:
    """A DOT string; ``\\n`` in ``s`` stays a line break (Graphviz's escape),
    any other backslash and every quote are escaped."""
    return '"' + "\\n".join(p.replace("\\", "\\\\").replace('"', '\\"')
                             for p in s.split("\\n")) + '"'


def to_dot(scn: Scenario) -> str:
    plan = planned_addresses(scn)
    L = [f"graph {_q(scn.name)} {{", "  rankdir=TB; compound=true; fontname=Helvetica;",
         "  node [fontname=Helvetica, fontsize=10]; edge [fontname=Helvetica, fontsize=9];",
         f"  label={_q(scn.name + (': ' + scn.description.splitlines()[0] if scn.description else ''))};",
         f"  underlay [shape=box, style=\"rounded,filled\", fillcolor=\"#dddddd\", "
         f"label={_q('underlay ' + scn.underlay_subnet)}];"]
    for h in scn.hosts.values():
        L.append(f"  subgraph {_q('cluster_' + h.name)} {{")
        L.append(f"    label={_q('host ' + h.name + '  eth0 ' + h.address)}; style=rounded; "
                 "color=\"#336699\";")
        L.append(f"    {_q('h_' + h.name)} [shape=point, width=0.1];")
        for n in h.networks.values():
            p = plan[(h.name, n.name)]
            cni = (", made by CNI ADD" if n.origin == "cni" else ", + CNI conflist") if n.cni else ""
            lab = f"{n.name} ({n.driver}{', internal' if n.internal else ''}{cni})\\n" \
                  f"{n.subnet or 'subnet from IPAM'}\\ngw {p['gateway']}"
            L.append(f"    {_q('n_' + h.name + '_' + n.name)} [shape=ellipse, style=filled, "
                     f"fillcolor=\"#cfe2f3\", label={_q(lab)}];")
            L.append(f"    {_q('h_' + h.name)} -- {_q('n_' + h.name + '_' + n.name)} [style=dotted];")
        for sb in h.sandboxes.values():
            extra = ""
            if sb.publish:
                extra = "\\npublish " + ", ".join(
                    f"{p.host_port or '*'}:{p.container_port}/{p.proto}" for p in sb.publish)
            mode = "" if sb.mode == "netns" else f" [{sb.mode}{' ' + sb.container if sb.container else ''}]"
            L.append(f"    {_q('s_' + sb.name)} [shape=box, style=filled, fillcolor=\"#fff2cc\", "
                     f"label={_q(sb.name + mode + extra)}];")
            for a in sb.attachments:
                addr = plan[(h.name, a.network)].get(sb.name, "")
                how = f"\\nCNI ADD {a.ifname}" if a.cni else ""
                L.append(f"    {_q('s_' + sb.name)} -- {_q('n_' + h.name + '_' + a.network)} "
                         f"[label={_q(addr + how)}{', style=bold' if a.cni else ''}];")
            if sb.mode == "host":
                L.append(f"    {_q('s_' + sb.name)} -- {_q('h_' + h.name)} [style=dashed, label=\"host netns\"];")
            if sb.mode == "container":
                L.append(f"    {_q('s_' + sb.name)} -- {_q('s_' + sb.container)} "
                         f"[style=dashed, label=\"shares netns\"];")
        L.append("  }")
        L.append(f"  underlay -- {_q('h_' + h.name)} [label={_q(h.address)}];")
    for o in scn.outside.values():
        L.append(f"  {_q('o_' + o.name)} [shape=box3d, label={_q('outside ' + o.name)}];")
        L.append(f"  underlay -- {_q('o_' + o.name)} [label={_q(o.address)}];")
    L.append("}")
    return "\n".join(L) + "\n"


def to_svg(scn: Scenario) -> str:
    """A plain SVG without Graphviz: one column per host, outside hosts last."""
    plan = planned_addresses(scn)
    colw, pad, lh = 260, 20, 16
    cols = []
    for h in scn.hosts.values():
        lines = [("b", f"host {h.name}  eth0 {h.address}")]
        for n in h.networks.values():
            lines.append(("n", f"net {n.name} ({n.driver}{', cni' if n.cni else ''}) {n.subnet or 'IPAM'} "
                               f"gw {plan[(h.name, n.name)]['gateway']}"))
        for sb in h.sandboxes.values():
            addrs = ", ".join(f"{a.network}={plan[(h.name, a.network)].get(sb.name, '')}"
                              + (" (cni)" if a.cni else "") for a in sb.attachments) or sb.mode
            lines.append(("s", f"{sb.name}: {addrs}" + (f" [{sb.mode}]" if sb.mode != "netns" else "")))
        cols.append(lines)
    for o in scn.outside.values():
        cols.append([("b", f"outside {o.name}  {o.address}")])
    height = pad * 4 + lh * max(len(c) for c in cols) + 60
    width = pad + len(cols) * (colw + pad)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="Helvetica,Arial,sans-serif" font-size="11">',
           f'<title>{html.escape(scn.name)}</title>',
           f'<rect x="{pad}" y="{height - 40}" width="{width - 2 * pad}" height="24" rx="6" fill="#dddddd"/>',
           f'<text x="{pad + 8}" y="{height - 24}">underlay {html.escape(scn.underlay_subnet)}</text>']
    colors = {"b": "#336699", "n": "#cfe2f3", "s": "#fff2cc"}
    for i, lines in enumerate(cols):
        x = pad + i * (colw + pad)
        h = pad + lh * len(lines) + 10
        out.append(f'<rect x="{x}" y="{pad}" width="{colw}" height="{h}" rx="8" fill="none" '
                   f'stroke="#336699"/>')
        out.append(f'<line x1="{x + colw / 2}" y1="{pad + h}" x2="{x + colw / 2}" y2="{height - 40}" '
                   f'stroke="#666"/>')
        for j, (kind, text) in enumerate(lines):
            y = pad + 18 + j * lh
            if kind != "b":
                out.append(f'<rect x="{x + 6}" y="{y - 12}" width="{colw - 12}" height="{lh - 2}" '
                           f'fill="{colors[kind]}"/>')
            bold = ' font-weight="bold"' if kind == "b" else ""
            out.append(f'<text x="{x + 10}" y="{y}"{bold}>{html.escape(text)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def render(scn: Scenario, output: str, use_dot: bool = True) -> str:
    """Write ``output`` (.svg, .png or .dot); returns how it was made."""
    ext = output.rsplit(".", 1)[-1].lower()
    if ext not in ("svg", "png", "dot"):
        raise ValueError(f"{output}: the output must end in .svg, .png or .dot")
    dot_src = to_dot(scn)
    if ext == "dot":
        with open(output, "w") as f:
            f.write(dot_src)
        return "dot source"
    dot = shutil.which("dot") if use_dot else None
    if dot:
        p = subprocess.run([dot, f"-T{ext}", "-o", output], input=dot_src.encode(),
                           capture_output=True, timeout=60)
        if p.returncode != 0:
            raise RuntimeError(f"dot failed: {p.stderr.decode(errors='replace').strip()}")
        return "graphviz dot"
    if ext == "png":
        raise RuntimeError("PNG needs Graphviz's dot (apt-get install graphviz); SVG works without it")
    with open(output, "w") as f:
        f.write(to_svg(scn))
    return "built-in SVG"

"""``pynet cni install``: the plugin binaries and example conflists.

Each binary is a two-line Python script run by this environment's
interpreter with ``-S`` (no site processing: ~15 ms less per call); the paths
site would have added -- the project and its site-packages -- are put on
``sys.path`` explicitly, so the binaries work from any CNI bin dir::

    #!/work/main/.venv/bin/python -S
    import sys; sys.path[:0] = ['/work/main', '/work/main/.venv/lib/python3.11/site-packages']
    from pynet.cni.main import main; main('bridge')
"""
from __future__ import annotations

import json
import os
import sys
import sysconfig
import tempfile

import pynet
from pynet.cni import PLUGINS

DEFAULT_BIN_DIR = "/opt/cni/bin"
DEFAULT_CONF_DIR = "/etc/cni/net.d"


def wrapper_text(plugin: str, python: str | None = None) -> str:
    python = python or sys.executable
    root = os.path.dirname(os.path.dirname(os.path.abspath(pynet.__file__)))
    paths = [root]
    for key in ("purelib", "platlib"):
        p = sysconfig.get_paths().get(key)
        if p and p not in paths:
            paths.append(p)
    return (f"#!{python} -S\n"
            f"import sys; sys.path[:0] = {paths!r}\n"
            f"from pynet.cni.main import main; main({plugin!r})\n")


def _write(path: str, text: str, mode: int) -> None:
    d = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(prefix=".pynet-", dir=d)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)   # atomic: a runtime never execs a half-written file
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def example_conflists(state_dir: str | None = None) -> dict[str, dict]:
    pyn = {"stateDir": state_dir} if state_dir else None
    bridge = {
        "cniVersion": "1.1.0", "name": "pynet-cni",
        "plugins": [{
            "type": "pynet-bridge", "bridge": "pynet-cni0", "isGateway": True,
            "isDefaultGateway": True, "ipMasq": True, "hairpinMode": True,
            "ipam": {"type": "pynet-ipam", "ranges": [[{"subnet": "10.88.0.0/16"}]]},
            "capabilities": {"portMappings": True, "ips": True, "mac": True},
        }],
    }
    macvlan = {
        "cniVersion": "1.1.0", "name": "pynet-macvlan",
        "plugins": [{
            "type": "pynet-macvlan", "master": "eth0", "mode": "bridge",
            "ipam": {"type": "pynet-ipam", "ranges": [[{"subnet": "10.89.0.0/24",
                                                         "gateway": "10.89.0.1"}]]},
            "capabilities": {"ips": True, "mac": True},
        }],
    }
    delegate = {
        "cniVersion": "1.0.0", "name": "pynet-ref",
        "plugins": [
            {"type": "bridge", "bridge": "pynet-ref0", "isGateway": True, "ipMasq": True,
             "ipam": {"type": "pynet-ipam", "ranges": [[{"subnet": "10.90.0.0/24"}]],
                      "routes": [{"dst": "0.0.0.0/0"}]}},
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }
    out = {"10-pynet-bridge.conflist.example": bridge, "20-pynet-macvlan.conflist.example": macvlan,
           "30-pynet-ipam-with-reference-bridge.conflist.example": delegate}
    if pyn:
        for c in out.values():
            for p in c["plugins"]:
                if p["type"].startswith("pynet-"):
                    p["pynet"] = dict(pyn)
                elif p.get("ipam", {}).get("type") == "pynet-ipam":
                    p["ipam"]["pynet"] = dict(pyn)
    return out


def install(bin_dir: str = DEFAULT_BIN_DIR, conf_dir: str | None = DEFAULT_CONF_DIR,
            state_dir: str | None = None, python: str | None = None) -> list[str]:
    """Write the binaries into ``bin_dir`` and the example conflists (named
    ``*.example``, so a runtime does not load them) into ``conf_dir``."""
    os.makedirs(bin_dir, mode=0o755, exist_ok=True)
    written = []
    for binary, plugin in PLUGINS.items():
        path = os.path.join(bin_dir, binary)
        _write(path, wrapper_text(plugin, python), 0o755)
        written.append(path)
    if conf_dir:
        os.makedirs(conf_dir, mode=0o755, exist_ok=True)
        for name, conf in example_conflists(state_dir).items():
            path = os.path.join(conf_dir, name)
            _write(path, json.dumps(conf, indent=2) + "\n", 0o644)
            written.append(path)
    return written


def uninstall(bin_dir: str = DEFAULT_BIN_DIR) -> list[str]:
    removed = []
    for binary in PLUGINS:
        path = os.path.join(bin_dir, binary)
        if os.path.exists(path):
            os.unlink(path)
            removed.append(path)
    return removed

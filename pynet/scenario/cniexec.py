"""The container runtime's side of CNI, as the scenario runner plays it: find
a plugin binary on ``CNI_PATH``, execute it with the ``CNI_*`` environment and
the network configuration on stdin, parse what it prints.

This follows libcni (``AddNetworkList`` / ``DelNetworkList``), which is what
containerd and CRI-O use:

* each plugin of a conflist gets ``cniVersion`` and ``name`` of the list plus
  its own entry; ``runtimeConfig`` carries only the capabilities the entry
  declares (``capabilities: {portMappings: true}`` ...);
* ADD runs the plugins in order, each with the previous one's result as
  ``prevResult``; the last result is the attachment's result (cached);
* DEL runs them in reverse, with the cached result as ``prevResult``.

Standard library only; no scapy, no pyroute2.
"""
from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass, field
from typing import Optional

EXEC_TIMEOUT = 60.0


class CniExecError(RuntimeError):
    """A plugin failed: exit code, CNI error code and message."""

    def __init__(self, plugin: str, command: str, rc: int, out: str, err: str):
        self.plugin, self.command, self.rc = plugin, command, rc
        try:
            res = json.loads(out) if out.strip() else {}
        except ValueError:
            res = {}
        self.code = res.get("code") if isinstance(res, dict) else None
        msg = (res.get("msg") or "") if isinstance(res, dict) else ""
        if isinstance(res, dict) and res.get("details"):
            msg += f" ({res['details']})"
        detail = msg or out.strip()[:300] or err.strip()[-300:] or "no output"
        super().__init__(f"CNI {command} {plugin}: exit {rc}"
                         + (f", code {self.code}" if self.code is not None else "") + f": {detail}")


@dataclass
class Attachment:
    """One ADD a runtime made (what it must remember to DEL it)."""
    container_id: str
    netns: str
    ifname: str
    conflist: dict
    runtime_config: dict = field(default_factory=dict)
    result: Optional[dict] = None


def find_plugin(cni_path: str, plugin_type: str) -> str:
    if "/" in plugin_type or plugin_type in ("", ".", ".."):
        raise CniExecError(plugin_type, "find", -1, "", f"invalid plugin type {plugin_type!r}")
    for d in cni_path.split(os.pathsep):
        p = os.path.join(d, plugin_type)
        if d and os.path.isfile(p) and os.access(p, os.X_OK):
            return p
    raise CniExecError(plugin_type, "find", -1, "", f"no plugin {plugin_type!r} in CNI_PATH {cni_path}")


def plugin_config(conflist: dict, plugin: dict, runtime_config: dict,
                  prev_result: Optional[dict]) -> dict:
    conf = {"cniVersion": conflist["cniVersion"], "name": conflist["name"]}
    conf.update(plugin)
    caps = plugin.get("capabilities") or {}
    rc = {k: v for k, v in runtime_config.items() if caps.get(k)}
    if rc:
        conf["runtimeConfig"] = rc
    if prev_result is not None:
        conf["prevResult"] = prev_result
    return conf


def execute(cni_path: str, command: str, conf: dict, container_id: str, netns: str, ifname: str,
            args: str = "", timeout: float = EXEC_TIMEOUT) -> Optional[dict]:
    """Run one plugin once; its parsed result (None when it prints nothing)."""
    exe = find_plugin(cni_path, conf["type"])
    env = {"PATH": os.environ.get("PATH") or "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
           "CNI_COMMAND": command, "CNI_CONTAINERID": container_id, "CNI_NETNS": netns,
           "CNI_IFNAME": ifname, "CNI_PATH": cni_path}
    if args:
        env["CNI_ARGS"] = args
    p = subprocess.run([exe], input=json.dumps(conf).encode(), env=env, capture_output=True,
                       timeout=timeout)
    out, err = p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")
    if p.returncode != 0:
        raise CniExecError(conf["type"], command, p.returncode, out, err)
    if not out.strip():
        return None
    try:
        return json.loads(out)
    except ValueError:
        raise CniExecError(conf["type"], command, p.returncode, out, "result is not JSON") from None


def add(cni_path: str, att: Attachment) -> dict:
    prev = None
    for plugin in att.conflist["plugins"]:
        conf = plugin_config(att.conflist, plugin, att.runtime_config, prev)
        prev = execute(cni_path, "ADD", conf, att.container_id, att.netns, att.ifname)
        if prev is None:
            raise CniExecError(plugin["type"], "ADD", 0, "", "ADD printed no result")
    att.result = prev
    return prev


def delete(cni_path: str, att: Attachment) -> None:
    """DEL through the list in reverse; every plugin runs even if one fails,
    the first failure is raised at the end (as a runtime retries later)."""
    first = None
    for plugin in reversed(att.conflist["plugins"]):
        conf = plugin_config(att.conflist, plugin, att.runtime_config, att.result)
        try:
            execute(cni_path, "DEL", conf, att.container_id, att.netns, att.ifname)
        except (CniExecError, OSError, subprocess.TimeoutExpired) as e:
            first = first or e
    if first is not None:
        raise first


def interface_of(result: dict, ifname: str, netns: str = "") -> dict:
    """What the result says about the sandbox interface ``ifname``:
    {mac, addresses: [cidr], gateway, host_ifaces: [names]}."""
    ifaces = result.get("interfaces") or []
    idx = next((i for i, f in enumerate(ifaces) if f.get("name") == ifname and f.get("sandbox")
                and (not netns or f.get("sandbox") == netns)), None)
    ips = [ip for ip in result.get("ips") or [] if idx is None or ip.get("interface") == idx]
    return {"mac": (ifaces[idx].get("mac", "") if idx is not None else "").lower(),
            "addresses": [ip["address"] for ip in ips],
            "gateway": next((ip.get("gateway", "") for ip in ips if ip.get("gateway")), ""),
            "host_ifaces": [f["name"] for f in ifaces if not f.get("sandbox") and f.get("name")]}

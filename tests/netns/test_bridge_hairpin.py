"""Bridge ports are in hairpin mode, as Docker sets them without its userland
proxy: a container's packet to its own published port comes back through the
port it left by."""
from __future__ import annotations

import subprocess

from tests.netns.test_bridge import container, drv, make_net  # noqa: F401  (fixtures)


def _hairpin(netns_path: str, ifname: str) -> str:
    # netlink's view (ip -d link), not sysfs: reading sysfs of another
    # namespace would need a remount of /sys
    out = subprocess.run(["nsenter", f"--net={netns_path}", "ip", "-d", "link", "show", "dev", ifname],
                         capture_output=True, text=True, check=True).stdout
    return "1" if "hairpin on" in out else "0" if "hairpin off" in out else "?"


def test_host_veth_is_hairpin_and_stays_so_after_restore(drv, host_ns, make_netns):  # noqa: F811
    net = make_net(drv, subnet="10.62.0")
    ep, _ = container(drv, host_ns, make_netns, net, "10.62.0.2/24")
    host = ep.driver_state["host_veth"]
    assert host_ns.nl.get_link(host).master == net.driver_state["bridge"]
    assert _hairpin(host_ns.path, host) == "1"
    # the bridge deleted behind pynet's back: restore re-enslaves, hairpin again
    host_ns.nl.delete_link(net.driver_state["bridge"])
    drv.restore([net], [ep])
    assert _hairpin(host_ns.path, host) == "1"

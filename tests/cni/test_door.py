"""The CNI door through the pynet CNI binaries (issue 9, the fuzzer's
findings), in-process and handed to a pynet daemon: values that used to answer
999 (``ipam.ranges: true``, ``mtu: -Infinity``), to fail in the kernel after
the network and the veth existed (a route gateway off the subnet), or to be
refused only once the network existed (a ``hostIP`` not on this host), and
``pynet.chainPrefix``/``instance`` text that names chains and link aliases --
each refused with code 7 and one line, and the host's tables, links and the
store exactly as they were."""
from __future__ import annotations

import copy

import pytest

from tests.cni.test_injection import _observe

CASES = [
    ("ranges true", {"ipam": {"type": "pynet-ipam", "ranges": True}}),
    ("mtu -inf", {"mtu": float("-inf")}),
    ("route gw off the subnet", {"ipam": {"type": "pynet-ipam", "ranges": [[{"subnet": "10.250.0.0/24"}]],
                                          "routes": [{"dst": "10.99.0.0/16", "gw": "10.5.0.1"}]}}),
    # TEST-NET-2: nothing is sent, the check only tries to bind the address
    ("hostIP not on this host", {"runtimeConfig": {"portMappings": [{"hostPort": 18251, "containerPort": 80,
                                                                     "hostIP": "198.51.100.7"}]}}),
    ("chainPrefix newline", {"pynet": {"chainPrefix": "P\nCOMMIT"}}),
    ("chainPrefix wildcard", {"pynet": {"chainPrefix": "P+"}}),
    ("instance colon", {"pynet": {"instance": "x:y"}}),
    ("instance path", {"pynet": {"instance": "../x"}}),
]


@pytest.mark.parametrize("via", ["in-process", "daemon"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_refused_at_the_door_and_nothing_changed(cni, case, via):
    over = copy.deepcopy(case[1])   # the case is shared by both parametrizations
    if via == "daemon":
        cni.start_daemon()
    ns = cni.container()
    conf = cni.conf(capabilities={"portMappings": True})
    pyn = dict(conf["pynet"], **over.pop("pynet", {}))
    conf.update(over)
    conf["pynet"] = pyn
    if via == "in-process":
        conf["pynet"]["daemon"] = False
    before = _observe(cni)
    r = cni.call("pynet-bridge", "ADD", conf, "door1", "eth0", ns)
    assert r.rc != 0 and r.out is not None, (r.raw, r.err)
    assert r.out["code"] == 7, r.out
    assert r.out["msg"] and "\n" not in r.out["msg"], r.out
    assert _observe(cni) == before

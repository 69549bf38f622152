"""Issue 9 (defects 4, 5, 8) through the pynet CNI binaries, in-process and
handed to a pynet daemon over ``/Pynet.CNI``: iptables wildcards and NUL in
``bridge``, zone text in ``hostIP``/``ips``/ipam addresses, a trailing newline
in CNI_CONTAINERID -- each answered with its CNI code and one line, and the
host namespace's tables, links and the store exactly as they were."""
from __future__ import annotations

import os

import pytest

ZONE = "::%lo\nCOMMIT\n*filter\n-I INPUT 1 -j ACCEPT"


def _observe(cni):
    tables = tuple("".join(line for line in cni.in_host(tool).stdout.splitlines(True)
                           if not line.startswith("#"))
                   for tool in ("iptables-save", "ip6tables-save"))
    keys = []
    if os.path.exists(os.path.join(cni.state_dir, "pynet.db")):
        keys = [r.key for r in cni.store().list("") if r.key.startswith(("networks/", "endpoints/", "cni/"))]
    return tables, sorted(cni.links()), keys


CASES = [
    ("bridge +", {"bridge": "+"}, {}, 7),
    ("bridge eth+", {"bridge": "eth+"}, {}, 7),
    ("bridge -j", {"bridge": "-j"}, {}, 7),
    ("bridge NUL", {"bridge": "b\u0000r"}, {}, 7),
    ("hostIP zone", {"runtimeConfig": {"portMappings": [{"hostPort": 18250, "containerPort": 80,
                                                         "protocol": "tcp", "hostIP": ZONE}]}}, {}, 7),
    ("hostIP ::%x", {"runtimeConfig": {"portMappings": [{"hostPort": 18250, "containerPort": 80,
                                                         "hostIP": "::%x"}]}}, {}, 7),
    ("ips zone", {"runtimeConfig": {"ips": ["fd00::5%lo/64"]}}, {}, 7),
    ("ipam gateway zone", {"ipam": {"type": "pynet-ipam",
                                    "ranges": [[{"subnet": "10.250.0.0/24"}],
                                               [{"subnet": "fd00:250::/64", "gateway": "fd00:250::1%lo"}]]}},
     {}, 7),
    ("container ID newline", {}, {"cid": "bad1\n"}, 4),
    ("ifname eth+", {}, {"ifname": "eth+"}, 4),
]


@pytest.mark.parametrize("via", ["in-process", "daemon"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_injection_refused_and_nothing_changed(cni, case, via):
    _, over, call, code = case
    if via == "daemon":
        cni.start_daemon()
    ns = cni.container()
    conf = cni.conf(capabilities={"portMappings": True, "ips": True}, **over)
    if via == "in-process":
        conf["pynet"]["daemon"] = False
    before = _observe(cni)
    r = cni.call("pynet-bridge", "ADD", conf, call.get("cid", "bad1"), call.get("ifname", "eth0"), ns)
    assert r.rc != 0 and r.out is not None, (r.raw, r.err)
    assert r.out["code"] == code, r.out
    assert r.out["msg"] and "\n" not in r.out["msg"], r.out
    assert _observe(cni) == before

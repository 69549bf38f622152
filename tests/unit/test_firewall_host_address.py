""""The host address must be local" is checked at the door (issue 9, defect 8 part).

The check used to live in BridgeFirewall.sync and was skipped on a process's first sync:
so on every CNI exec (each one a new process) a published port bound to a foreign host
address went straight into the rules; and ``::%x`` (zone text, which Python's ipaddress
accepts) counted as unspecified and skipped it too.  Now BridgeDriver.
program_external_connectivity refuses such a mapping before it is stored, so nothing
changes: no endpoint record, no rule.

CNI path: pynet.cni.dispatch.run in-process, the real Controller/BridgeDriver/BridgeFirewall/
Firewall over the fake netlink and a stateful fake iptables backend; every ADD is its own
"process" (a new Controller and BridgeFirewall over the same store and tables).  The Docker
path is in tests/contract/test_contract_host_address.py.
"""
from __future__ import annotations

import json
import re

import pytest

from tests.support.fake_iptables import FakeTables

from pynet import errors  # noqa: E402
from pynet.cni import dispatch  # noqa: E402
from pynet.cnm.controller import Controller  # noqa: E402
from pynet.cnm.model import Endpoint, Network  # noqa: E402
from pynet.drivers import bridge  # noqa: E402
from pynet.drivers.bridge import BridgeDriver, check_host_address  # noqa: E402
from pynet.drivers.bridge_firewall import BridgeFirewall  # noqa: E402
from pynet.firewall import Firewall  # noqa: E402
from pynet.ipam import Ipam  # noqa: E402
from pynet.netlink.fake import FakeKernel, FakeNetlink  # noqa: E402
from pynet.store.memory import MemoryStore  # noqa: E402
from pynet.sysctl import FakeSysctl  # noqa: E402

LOCAL = {"127.0.0.1", "::1", "10.99.0.1"}  # this "host"'s addresses
FOREIGN = "198.51.100.77"  # TEST-NET-2: no host has it (and nothing is sent to it)


@pytest.fixture(autouse=True)
def local_addresses(monkeypatch):
    # deterministic whatever the machine (ip_nonlocal_bind would make every bind succeed)
    monkeypatch.setattr(bridge, "host_address_is_local", lambda ip: ip in LOCAL, raising=False)


def records(store):
    """The store's records; a pool's next-fit cursor may move (the address was allocated and
    released again), what it holds may not."""
    return [(r.key, {k: v for k, v in r.value.items() if k != "cursor"} if isinstance(r.value, dict)
             else r.value) for r in store.list("")]


class Host:
    def __init__(self, tmp_path):
        self.kernel = FakeKernel()
        self.store = MemoryStore()
        self.tables = FakeTables()
        self.tmp = tmp_path
        self.state = str(tmp_path / "state")

    def process(self):
        """What one CNI exec builds: its own controller and firewall adapter."""
        nl = FakeNetlink(self.kernel)
        fw = BridgeFirewall(Firewall("PT", backend=self.tables, sysctl=lambda p, v: None), store=self.store)
        return Controller(self.store, Ipam(self.store, host_routes=lambda: []),
                          {"bridge": BridgeDriver(nl, FakeSysctl(), instance="t")}, firewall=fw), nl

    def netns(self, name):
        path = str(self.tmp / name)
        open(path, "w").close()
        self.kernel.add_netns(path)
        return path

    def add(self, cid, ports):
        conf = {"cniVersion": "1.0.0", "name": "net1", "type": "pynet-bridge", "bridge": "tb0",
                "isDefaultGateway": True, "ipMasq": True, "capabilities": {"portMappings": True},
                "ipam": {"ranges": [[{"subnet": "10.9.0.0/24"}]]}, "pynet": {"stateDir": self.state},
                "runtimeConfig": {"portMappings": ports}}
        env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": cid, "CNI_IFNAME": "eth0",
               "CNI_NETNS": self.netns(cid)}
        c, nl = self.process()
        out, code = dispatch.run("bridge", env, json.dumps(conf).encode(), controller=c, netlink=nl,
                               instance="t")
        return code, json.loads(out) if out.strip() else None, c

    def rules(self):
        return "\n".join(self.tables.rules("ipv4") + self.tables.rules("ipv6"))


@pytest.mark.parametrize("host_ip", [FOREIGN, "::%x", "::%lo\nCOMMIT", "10.99.0.1%eth0"])
def test_cni_add_with_a_foreign_host_address_is_refused_and_changes_nothing(tmp_path, host_ip):
    h = Host(tmp_path)
    # a first pod makes the network (its process syncs the firewall once already)
    code, res, _ = h.add("pod1", [{"hostPort": 18080, "containerPort": 80, "protocol": "tcp",
                                   "hostIP": "10.99.0.1"}])
    assert code == 0, res
    before_rules, before_store = h.rules(), records(h.store)
    # the second pod is a new process: its first sync used to skip the check
    code, res, c = h.add("pod2", [{"hostPort": 18081, "containerPort": 80, "protocol": "tcp",
                                   "hostIP": host_ip}])
    assert code == 1 and res["code"] == errors.InvalidAddress.cni_code, res
    # (refused by the driver, or already by the front end's address check: either names it)
    assert re.search(r"host ?(ip|address)", res["msg"], re.I), res
    assert "\n" not in res["msg"]
    assert h.rules() == before_rules  # no rule, not even for a moment (a batch would show it)
    assert not any("18081" in text for _, text in h.tables.batches)
    assert records(h.store) == before_store  # endpoint and address undone


def test_cni_add_with_a_local_host_address_is_published(tmp_path):
    h = Host(tmp_path)
    code, res, _ = h.add("pod1", [{"hostPort": 18080, "containerPort": 80, "hostIP": "10.99.0.1"}])
    assert code == 0, res
    assert "-d 10.99.0.1/32 -p tcp -m tcp --dport 18080" in h.rules()


@pytest.mark.parametrize("host_ip,why", [
    ("::%x", "without zone"), (" 10.99.0.1", "without zone"), ("10.99.0.300", "invalid host address"),
    (FOREIGN, "not an address of this host"), ("10.99.0.1", None), ("::", None), ("0.0.0.0", None)])
def test_check_host_address(host_ip, why):
    if why is None:
        assert check_host_address(host_ip, "80/tcp", lambda ip: ip in LOCAL | {"::", "0.0.0.0"}) == host_ip
    else:
        with pytest.raises(errors.InvalidAddress, match=why):
            check_host_address(host_ip, "80/tcp", lambda ip: ip in LOCAL)


def test_driver_checks_the_network_host_binding_too():
    drv = BridgeDriver(FakeNetlink(), FakeSysctl(), instance="t")
    net = Network(id="n" * 64, options={"com.docker.network.bridge.host_binding_ipv4": FOREIGN})
    net.driver_state = bridge.parse_options(net)
    from pynet.cnm.model import PortMapping
    ep = Endpoint(id="e" * 64, network_id=net.id, address="10.9.0.2/24",
                  ports=[PortMapping("tcp", 80, 18080)])
    with pytest.raises(errors.InvalidAddress, match="not an address of this host"):
        drv.program_external_connectivity(net, ep)
    # a host address of a family the endpoint has no address of: refused here too
    ep.ports = [PortMapping("tcp", 80, 18080, host_ip="::1")]
    with pytest.raises(errors.InvalidParameter, match="no IPv6 address"):
        drv.program_external_connectivity(net, ep)

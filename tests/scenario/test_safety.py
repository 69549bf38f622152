"""The runner refuses to send on an interface it did not create or to an
address outside its topology -- in the Guard and inside a live probe agent."""
import subprocess
import sys
import textwrap

import pytest

from pynet.scenario.safety import Guard, SafetyError
from tests.support.scenario import NEEDS_ROOT, REPO, SCENARIOS


def test_guard_unit():
    g = Guard(["10.99.0.0/24", "10.10.1.0/24"], {"ps00000-h1": {"lo", "eth0"}})
    g.check_send("ps00000-h1", "10.10.1.7")
    g.check_send("ps00000-h1", "10.99.0.3", "eth0")
    for dst, ns, ifn, msg in [
        ("203.0.113.8", "ps00000-h1", None, "outside the topology"),
        ("192.0.2.1", "ps00000-h1", None, "192.0.2.0/24"),
        ("10.10.1.255", "ps00000-x", None, "not created by this run"),
        ("10.10.1.7", "ps00000-h1", "docker0", "was not created by this run"),
        ("224.0.0.1", "ps00000-h1", None, "unicast"),
    ]:
        with pytest.raises(SafetyError, match=msg):
            g.check_send(ns, dst, ifn)


@NEEDS_ROOT
def test_live_agent_refuses(snapshot):
    code = textwrap.dedent(f"""
        from pynet.scenario.model import load
        from pynet.scenario.topology import Topology
        from pynet.scenario.safety import SafetyError
        from pynet.scenario.worker import WorkerError
        t = Topology(load({str(SCENARIOS / "bridge-reachability.yaml")!r}))
        try:
            t.build()
            ns = t.places["a"].ns
            a = t.agent(ns)
            out = []
            for method, kw in [("ping", dict(dst="198.51.100.7")),
                               ("tcp_connect", dict(dst="203.0.113.8", port=53)),
                               ("arp", dict(dst="10.10.1.20", ifname="eth9")),
                               ("spoof", dict(dst="192.0.2.10", port=9, marker="x", src_ip="10.10.1.66"))]:
                try:
                    a.call(method, **kw)
                    out.append(method + ": SENT")
                except WorkerError as e:
                    out.append(method + ": " + str(e))
            try:
                t.guard.check_send(ns, "203.0.113.9")
            except SafetyError as e:
                out.append("runner: " + str(e))
            try:
                t.agent("not-ours")
            except SafetyError as e:
                out.append("agent: " + str(e))
            print("\\n".join(out))
        finally:
            t.teardown()
    """)
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 6, r.stdout
    assert all("refused" in x for x in lines), r.stdout
    assert "SENT" not in r.stdout
    assert "outside the topology" in lines[0] and "eth9" in lines[2] and "192.0.2.0/24" in lines[3]

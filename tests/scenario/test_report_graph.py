"""Report (table, JUnit, pcap) and graph, without namespaces."""
import shutil
import xml.etree.ElementTree as ET

import pytest

from pynet.scenario import graph, report
from pynet.scenario.model import load
from pynet.scenario.runner import Result, _ipv4
from tests.support.scenario import SCENARIOS, run_cli

FRAME = bytes.fromhex("ffffffffffff0242ac110002080045000054000040004001"
                      "0000" "0a0a0102" "0a0a0103") + b"\x08\x00" + b"\x00" * 62


def results():
    s = load(str(SCENARIOS / "wrong" / "isolation-on-shared-network.yaml"))
    ok = Result(s.expectations[0], "a", "b (10.10.1.3)", True, "echo-reply from 10.10.1.3")
    bad = Result(s.expectations[1], "a", "b (10.10.1.3)", False, "echo-reply from 10.10.1.3",
                 packets=[(1.5, FRAME, "[x:eth0] Ether / IP / ICMP")], pcap="/tmp/x.pcap")
    return s, [ok, bad]


def test_table_has_every_column():
    _, rs = results()
    t = report.table(rs)
    assert "expectation" in t and "from -> to" in t and "PASS" in t and "FAIL" in t
    assert "wrongly-expected-isolation" in t and "blocked" in t


def test_junit(tmp_path):
    s, rs = results()
    p = report.write_junit(str(tmp_path / "j.xml"), [(s, rs, "", 1.0)])
    root = ET.parse(p).getroot()
    assert root.get("tests") == "2" and root.get("failures") == "1"
    cases = root.findall(".//testcase")
    assert [c.get("name") for c in cases] == ["00-reach-a-b-icmp", "wrongly-expected-isolation"]
    f = cases[1].find("failure")
    assert "expected blocked" in f.get("message") and "/tmp/x.pcap" in f.text


def test_pcap_roundtrip(tmp_path):
    p = report.write_pcap(str(tmp_path / "a.pcap"), [(1.25, FRAME, "s"), (2.0, b"\x01" * 20, "t")])
    got = report.read_pcap(p)
    assert got[0] == (1.25, FRAME) and got[1][1] == b"\x01" * 20
    if shutil.which("tcpdump"):
        import subprocess
        out = subprocess.run(["tcpdump", "-nr", p], capture_output=True, text=True)
        assert "10.10.1.2 > 10.10.1.3" in out.stdout


def test_raw_parsers():
    assert _ipv4(FRAME) == ("10.10.1.2", "10.10.1.3")
    assert _ipv4(b"\x00" * 10) is None


def test_vxlan_decode_finds_the_vni_and_inner_arp():
    """The underlay agent's decoder (scapy): VNI of each VXLAN frame, and whether it carries
    an ARP frame; other UDP and VXLAN on another port are not counted."""
    from scapy.all import ARP, ICMP, IP, UDP, VXLAN, Ether

    from pynet.scenario.probes import ProbeService

    def outer(inner, vni, port=4789):
        return bytes(Ether() / IP(src="10.99.0.10", dst="10.99.0.11") / UDP(sport=40000, dport=port)
                     / VXLAN(vni=vni, flags=0x08) / inner)
    icmp = Ether(src="02:42:0a:1e:00:02") / IP(src="10.30.0.2", dst="10.30.0.3") / ICMP()
    arp = Ether(dst="ff:ff:ff:ff:ff:ff") / ARP(pdst="10.30.0.3")
    frames = [outer(icmp, 4096), outer(arp, 4097), outer(icmp, 7, port=8472),
              bytes(Ether() / IP() / UDP(dport=53))]
    got = ProbeService().vxlan_decode(frames)
    assert [(g["vni"], g["arp"]) for g in got] == [(4096, False), (4097, True)]
    assert [(g["vni"], g["arp"]) for g in ProbeService().vxlan_decode(frames, udp_port=8472)] == [(7, False)]


@pytest.mark.parametrize("ext", ["svg", "png"])
def test_graph_with_dot(tmp_path, ext):
    out = tmp_path / f"g.{ext}"
    if shutil.which("dot") is None:
        with pytest.raises(RuntimeError, match="dot") if ext == "png" else _nullctx():
            graph.render(load(str(SCENARIOS / "sandbox-modes.yaml")), str(out))
        return
    r = run_cli("graph", SCENARIOS / "sandbox-modes.yaml", "-o", out)
    assert r.returncode == 0, r.stderr
    data = out.read_bytes()
    if ext == "svg":
        assert b"<svg" in data and b"web" in data and b"10.10.1.10" in data and b"h1" in data
    else:
        assert data[:8] == b"\x89PNG\r\n\x1a\n"


def test_graph_builtin_svg(tmp_path):
    s = load(str(SCENARIOS / "network-isolation.yaml"))
    out = tmp_path / "g.svg"
    assert graph.render(s, str(out), use_dot=False) == "built-in SVG"
    text = out.read_text()
    ET.fromstring(text)            # well-formed
    for word in ("host h1", "host h2", "vault", "10.10.9.0/24", "a1", "~10.10.1.2", "10.99.0.0/24"):
        assert word in text, word


def test_graph_dot_source_and_planned_addresses(tmp_path):
    s = load(str(SCENARIOS / "sandbox-modes.yaml"))
    plan = graph.planned_addresses(s)[("h1", "front")]
    assert plan["gateway"] == "~10.10.1.1" and plan["web"] == "10.10.1.10" and plan["peer"] == "~10.10.1.2"
    src = graph.to_dot(s)
    assert "shares netns" in src and "host netns" in src
    with pytest.raises(ValueError):
        graph.render(s, str(tmp_path / "g.gif"))


class _nullctx:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False

"""isolate_from: pynet networks isolated from others' bridges; instance-scoped tags."""
from pynet.errors import InvalidParameter
from pynet.firewall import Firewall, NetworkSpec, parse_save
from pynet.firewall.reconcile import parse_rule_tokens

import pytest


class NoBackend:
    name = "none"


def chain(text, name):
    return [" ".join(r.spec) for r in parse_save(text)["filter"].chains[name]]


def test_isolate_from_renders_both_directions():
    fw = Firewall("PN", backend=NoBackend(), isolate_from=("docker0", "br-+"))
    text = fw.render([NetworkSpec("n1", "pn-1", ["10.231.1.0/24"])], [])["ipv4"]
    assert chain(text, "PN-ISOLATION-STAGE-1") == [
        "-i pn-1 ! -o pn-1 -j PN-ISOLATION-STAGE-2",
        "-i docker0 ! -o docker0 -j PN-ISOLATION-STAGE-2",
        "-i br-+ ! -o br-+ -j PN-ISOLATION-STAGE-2",
        "-j RETURN"]
    assert chain(text, "PN-ISOLATION-STAGE-2") == [
        "-o pn-1 -j DROP", "-o docker0 -j DROP", "-o br-+ -j DROP", "-j RETURN"]


def test_isolate_from_validated():
    fw = Firewall("PN", backend=NoBackend(), isolate_from=("bad name",))
    with pytest.raises(InvalidParameter):
        fw.render([NetworkSpec("n1", "pn-1", ["10.231.1.0/24"])], [])


def test_tag_carries_instance_and_parse_scopes_it():
    text = Firewall("PN", backend=NoBackend()).render([NetworkSpec("n1", "pn-1", ["10.231.1.0/24"])], [])["ipv4"]
    assert '--comment "pynet:PN:n1"' in text
    toks = ["-j", "X", "-m", "comment", "--comment", "pynet:OTHER:n1"]
    r = parse_rule_tokens(toks, "PN")
    assert r.owner is None and r.peer and r.spec == tuple(toks)
    r = parse_rule_tokens(["-m", "comment", "--comment", "pynet:PN:a:b", "-j", "X"], "PN")
    assert r.owner == "a:b" and not r.peer and r.spec == ("-j", "X")
    assert parse_rule_tokens(toks).owner == "n1"  # no instance given: any pynet tag

"""Host port choice like Docker's portallocator."""
import pytest

from pynet.errors import InvalidParameter, PortInUse
from pynet.firewall import allocate_host_port, ephemeral_range


@pytest.fixture
def prange(tmp_path):
    p = tmp_path / "ip_local_port_range"
    p.write_text("40000\t40003\n")
    return str(p)


def test_explicit_port_as_given():
    assert allocate_host_port("tcp", "", 18088, None, set()) == 18088
    assert allocate_host_port("tcp", "", 18088, 18088, set()) == 18088


def test_explicit_port_in_use():
    with pytest.raises(PortInUse, match=r"Bind for 0.0.0.0:18088 failed: port is already allocated"):
        allocate_host_port("tcp", "", 18088, None, {("tcp", "", 18088)})
    with pytest.raises(PortInUse, match="127.0.0.1:80"):
        allocate_host_port("tcp", "127.0.0.1", 80, None, {("tcp", "0.0.0.0", 80)})
    with pytest.raises(PortInUse):
        allocate_host_port("udp", "", 53, None, {53})  # plain int: held everywhere
    with pytest.raises(PortInUse):
        allocate_host_port("tcp", "10.0.0.1", 53, None, {("tcp", 53)})


def test_same_port_other_proto_or_address_is_free():
    assert allocate_host_port("udp", "", 18088, None, {("tcp", "", 18088)}) == 18088
    assert allocate_host_port("tcp", "10.0.0.2", 80, None, {("tcp", "10.0.0.1", 80)}) == 80


def test_port_zero_first_free_of_ephemeral_range(prange):
    assert allocate_host_port("tcp", "", 0, None, set(), port_range_file=prange) == 40000
    held = {("tcp", "", 40000), ("tcp", "", 40001)}
    assert allocate_host_port("tcp", "", 0, None, held, port_range_file=prange) == 40002
    with pytest.raises(PortInUse, match="40000-40003"):
        allocate_host_port("tcp", "", 0, None, {40000, 40001, 40002, 40003}, port_range_file=prange)


def test_port_zero_uses_proc_range():
    lo, hi = ephemeral_range()
    assert 0 < lo <= hi <= 65535
    assert allocate_host_port("tcp", "", 0, None, set()) == lo
    assert ephemeral_range("/nonexistent") == (49153, 65535)


def test_range_first_free():
    assert allocate_host_port("tcp", "", 8000, 8002, set()) == 8000
    assert allocate_host_port("tcp", "", 8000, 8002, {("tcp", "", 8000)}) == 8001
    with pytest.raises(PortInUse, match="8000-8002"):
        allocate_host_port("tcp", "", 8000, 8002, {8000, 8001, 8002})


@pytest.mark.parametrize("args", [("icmp", "", 80, None), ("tcp", "", 70000, None), ("tcp", "", -1, None),
                                  ("tcp", "", 9000, 8000), ("tcp", "", 0, 8000)])
def test_invalid(args):
    with pytest.raises(InvalidParameter):
        allocate_host_port(*args, set())

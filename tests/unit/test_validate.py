"""pynet.validate: each kind of value refused with its typed error and one
readable line; what is accepted comes back parsed or normalised."""
from __future__ import annotations

import ipaddress
import sys

import pytest

from pynet import errors, validate

ZONE_INJECTION = "::%lo\nCOMMIT\n*filter\n-I INPUT 1 -j ACCEPT"


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert msg and "\n" not in msg and "\r" not in msg and "\0" not in msg, repr(msg)
    assert len(msg) < 300, msg
    return msg


# ----------------------------------------------------------------- interface names
@pytest.mark.parametrize("name", ["eth0", "br-lan", "pn-0123456789ab", "a" * 15, "eth1.50",
                                  "wg_0", "veth@x", "x"])
def test_ifname_accepts_ordinary_names(name):
    assert validate.ifname(name) == name


@pytest.mark.parametrize("name, fragment", [
    ("", "empty"),
    ("a" * 16, "at most 15"),
    (".", "invalid"), ("..", "invalid"),
    ("a/b", "'/'"), ("a:b", "':'"),
    ("a b", "printable"), ("a\tb", "printable"), ("br0\n", "printable"),
    ("br\0x", "printable"), ("\0", "printable"),
    ("+", "wildcard"), ("eth+", "wildcard"), ("e+th", "wildcard"),
    ("-j", "'-'"), ("-", "'-'"),
    ("br!0", "'!'"), ('br"0', "'\"'"), ("br'0", "\"'\""), ("br\\0", "'\\\\'"), ("br#0", "'#'"),
    ("brü", "printable"), ("br\x7f", "printable"), ("\udc80", "printable"),
])
def test_ifname_refuses(name, fragment):
    with pytest.raises(errors.InvalidParameter) as e:
        validate.ifname(name)
    assert fragment in one_line(e)


def test_ifname_non_string_and_error_class():
    with pytest.raises(errors.InvalidParameter) as e:
        validate.ifname(5)
    assert "string" in one_line(e)
    with pytest.raises(errors.InvalidOption) as e:
        validate.ifname("+", "bridge name (option x)", err=errors.InvalidOption)
    assert one_line(e).startswith("invalid bridge name (option x) '+'")


def test_ifname_byte_length_is_checked_on_ascii_only():
    # 8 two-byte characters are 16 bytes: refused as non-ASCII before any length question
    with pytest.raises(errors.InvalidParameter):
        validate.ifname("é" * 8)


# -------------------------------------------------------------------- addresses
@pytest.mark.parametrize("text", ["10.1.0.5", "0.0.0.0", "::", "fd00::1", "FD00::1", "::ffff:10.0.0.1"])
def test_ip_address_accepts(text):
    assert validate.ip_address(text) == ipaddress.ip_address(text)


@pytest.mark.parametrize("text, fragment", [
    (ZONE_INJECTION, "zone"), ("::%lo", "zone"), ("fe80::1%eth0", "zone"), ("::%", "zone"),
    (" 10.0.0.1", "whitespace"), ("10.0.0.1\n", "whitespace"), ("10.0.0.1 ", "whitespace"),
    ("10.0.0.1\0", "invalid"), ("10.0.0.256", "not an IP"), ("banana", "invalid"),
    ("", "invalid"), ("10.0.0.1/24", "invalid"), ("1.2.3.4,5.6.7.8", "invalid"),
])
def test_ip_address_refuses(text, fragment):
    with pytest.raises(errors.InvalidAddress) as e:
        validate.ip_address(text)
    assert fragment in one_line(e)


def test_ip_address_prefix_and_version():
    assert validate.ip_address("10.1.0.5/24", allow_prefix=True) == ipaddress.ip_address("10.1.0.5")
    with pytest.raises(errors.InvalidAddress):
        validate.ip_address("fd00::5%x/64", allow_prefix=True)
    with pytest.raises(errors.InvalidAddress):
        validate.ip_address("10.1.0.5/33", allow_prefix=True)
    with pytest.raises(errors.InvalidAddress) as e:
        validate.ip_address("::1", "option host_ipv4", version=4)
    assert "IPv4" in one_line(e)
    with pytest.raises(errors.InvalidAddress) as e:
        validate.ip_address(None)
    assert "string" in one_line(e)


def test_ip_interface():
    assert validate.ip_interface("fd00::5/64") == ipaddress.ip_interface("fd00::5/64")
    for bad in ("fd00::5%lo/64", "fd00::5%lo\nCOMMIT/64", "fd00::5", " fd00::5/64", "fd00::5/64\n",
                "fd00::5/129", "10.0.0.1/24/1"):
        with pytest.raises(errors.InvalidAddress) as e:
            validate.ip_interface(bad, "Interface.AddressIPv6")
        assert "Interface.AddressIPv6" in one_line(e)
    with pytest.raises(errors.InvalidAddress):
        validate.ip_interface("10.0.0.5/24", version=6)


def test_ip_network():
    assert validate.ip_network("10.1.0.7/24") == ipaddress.ip_network("10.1.0.0/24")
    with pytest.raises(errors.InvalidSubnet):
        validate.ip_network("10.1.0.7/24", strict=True)
    for bad in ("fd00::%lo/64", "fd00::/64%lo", "10.0.0.0", "10.0.0.0/33", "10.0.0.0/24 ",
                "\t10.0.0.0/24", "10.0.0.0/+24"):
        with pytest.raises(errors.InvalidSubnet) as e:
            validate.ip_network(bad)
        one_line(e)


def test_python_ipaddress_still_accepts_zone_text():
    """Why the zone check exists: if this ever fails, ipaddress got stricter."""
    if sys.version_info < (3, 9):
        pytest.skip("no scope ids before 3.9")
    assert str(ipaddress.ip_address(ZONE_INJECTION)).endswith("ACCEPT")


# -------------------------------------------------------------------------- MACs
def test_mac():
    assert validate.mac("2:42:A:0:0:1") == "02:42:0a:00:00:01"
    assert validate.mac("02-42-0a-00-00-01") == "02:42:0a:00:00:01"
    for bad in ("", "02:42:0a:00:00", "02:42:0a:00:00:01:02", "02:42:0a:00:00:0g", " 2:42:a:0:0:1",
                "02:42:0a:00:00:01\n", "+2:42:0a:00:00:01", "0x2:42:0a:00:00:01"):
        with pytest.raises(errors.InvalidAddress) as e:
            validate.mac(bad)
        one_line(e)


# --------------------------------------------------------------------------- IDs
def test_docker_id():
    good = "0123456789abcdef" * 4
    assert validate.docker_id(good) == good
    for bad in ("", "abc", good[:-1], good + "0", good.upper(), good[:-1] + "/", "a/" + good[2:],
                good + "\n", good[:63] + "g", "x" * 64):
        with pytest.raises(errors.InvalidRequest) as e:
            validate.docker_id(bad, "NetworkID")
        assert "NetworkID" in one_line(e)
    with pytest.raises(errors.InvalidRequest):
        validate.docker_id(5, "EndpointID")


@pytest.mark.parametrize("cid", ["abc", "0", "a_b.c-d", "A" * 200, "6f2c1e0a"])
def test_cni_id_accepts(cid):
    assert validate.cni_id(cid) == cid


@pytest.mark.parametrize("cid", ["", "abc\n", "abc\r\n", "-abc", ".abc", "_abc", "a b", "a/b",
                                 "a\0b", "abc$", "ä"])
def test_cni_id_refuses(cid):
    """``$`` in the old pattern matched before a trailing newline: ``abc\\n`` passed."""
    with pytest.raises(errors.InvalidParameter) as e:
        validate.cni_id(cid, "CNI_CONTAINERID")
    assert "CNI_CONTAINERID" in one_line(e)


# ------------------------------------------------------------------------- ports
def test_port():
    assert validate.port(1) == 1 and validate.port(65535) == 65535
    assert validate.port(0, allow_zero=True) == 0
    for bad in (0, -1, 65536, True, "80", 80.0, None):
        with pytest.raises(errors.InvalidParameter) as e:
            validate.port(bad, "hostPort")
        assert "hostPort" in one_line(e)


# ----------------------------------------------------------------- option values
def test_option_value():
    assert validate.option_value("1400") == "1400"
    assert validate.option_value("a b") == "a b"
    assert validate.option_value(True) is True and validate.option_value(3) == 3
    for bad in ("a\nb", "a\0", "\t", "x\r", "\udc80", "\x1b[31m"):
        with pytest.raises(errors.InvalidOption) as e:
            validate.option_value(bad, "option com.docker.network.bridge.name")
        assert "com.docker.network.bridge.name" in one_line(e)
    with pytest.raises(errors.InvalidOption):
        validate.option_value(None)


def test_option_key():
    assert validate.option_key("com.docker.network.driver.mtu") == "com.docker.network.driver.mtu"
    for bad in ("", "a b", "a\nb", "\0"):
        with pytest.raises(errors.InvalidOption) as e:
            validate.option_key(bad)
        one_line(e)


def test_long_values_are_cut_in_messages():
    with pytest.raises(errors.InvalidAddress) as e:
        validate.ip_address("::%" + "x" * 5000)
    assert len(one_line(e)) < 200


def test_validate_is_a_leaf():
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(validate))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported |= {f"{node.module}.{a.name}" if node.module == "pynet" else node.module
                         for a in node.names}
    assert {m for m in imported if m.startswith("pynet")} <= {"pynet.errors"}, imported

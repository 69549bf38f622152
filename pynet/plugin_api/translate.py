"""Docker's remote-driver wire format <-> pynet's CNM objects.

This is the only module that knows Docker's JSON field names and option keys
(``IPv4Data``, ``com.docker.network.portmap``, ...).  Everything it hands the
controller is in CNM words (IPData, PortMapping, plain keyword arguments);
everything it renders comes from CNM objects (JoinInfo, Endpoint).

Malformed input raises ``InvalidRequest`` (Docker 400) with one readable line
that names the offending field.
"""
from __future__ import annotations

import base64
import json
from typing import Any, Optional

from pynet import errors, validate
from pynet.cnm.model import Endpoint, IPData, JoinInfo, PortMapping

# --- Docker option keys (the wire names; used nowhere else) ------------------
OPT_GENERIC = "com.docker.network.generic"
OPT_ENABLE_IPV6 = "com.docker.network.enable_ipv6"
OPT_INTERNAL = "com.docker.network.internal"
OPT_MAC = "com.docker.network.endpoint.macaddress"
OPT_PORTMAP = "com.docker.network.portmap"
OPT_EXPOSED = "com.docker.network.endpoint.exposedports"

# ``-o pynet.driver=<name>`` picks the pynet driver for a Docker network.
OPT_DRIVER = "pynet.driver"
DEFAULT_DRIVER = "bridge"

# Driver options whose values become interface names or addresses (kernel
# objects, iptables tokens): checked here, at the door, whatever the driver.
OPT_BRIDGE_NAME = "com.docker.network.bridge.name"
OPT_HOST_BINDING = "com.docker.network.bridge.host_binding_ipv4"
OPT_HOST_IPV4 = "com.docker.network.host_ipv4"
OPT_PARENT = "parent"

# IP protocol numbers as Docker sends them in port maps.
PROTO_BY_NUMBER = {6: "tcp", 17: "udp", 132: "sctp"}


# ------------------------------------------------------------------ parsing
def parse_body(raw: bytes) -> dict:
    """The request body as a dict; an empty body (Activate, GetCapabilities,
    GetDefaultAddressSpaces) or ``null`` is ``{}``."""
    if not raw or not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as e:
        raise errors.InvalidRequest(f"malformed JSON request body: {_one_line(e)}") from None
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise errors.InvalidRequest(
            f"request body must be a JSON object, not {_json_type(body)}")
    return body


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())


def _json_type(v: Any) -> str:
    if v is None:
        return "null"
    return {bool: "boolean", int: "number", float: "number", str: "string",
            list: "array", dict: "object"}.get(type(v), type(v).__name__)


def get_str(d: dict, key: str, where: str = "", required: bool = False) -> str:
    v = d.get(key)
    if v is None:
        v = ""
    if not isinstance(v, str):
        raise errors.InvalidRequest(f"{where}{key} must be a string, not {_json_type(v)}")
    if required and not v:
        raise errors.InvalidRequest(f"{where}{key} is required")
    return v


def get_bool(d: dict, key: str, where: str = "") -> bool:
    v = d.get(key)
    if v is None:
        return False
    if isinstance(v, bool):
        return v
    # Docker sends real booleans; accept the string forms `-o` values take.
    if isinstance(v, str) and v.lower() in ("true", "false", "1", "0", ""):
        return v.lower() in ("true", "1")
    raise errors.InvalidRequest(f"{where}{key} must be a boolean, not {_json_type(v)}")


def get_dict(d: dict, key: str, where: str = "") -> dict:
    v = d.get(key)
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise errors.InvalidRequest(f"{where}{key} must be an object, not {_json_type(v)}")
    return v


def get_list(d: dict, key: str, where: str = "") -> list:
    v = d.get(key)
    if v is None:
        return []
    if not isinstance(v, list):
        raise errors.InvalidRequest(f"{where}{key} must be an array, not {_json_type(v)}")
    return v


def get_int(d: dict, key: str, where: str = "") -> int:
    v = d.get(key)
    if v is None:
        return 0
    if isinstance(v, bool) or not isinstance(v, int):
        raise errors.InvalidRequest(f"{where}{key} must be an integer, not {_json_type(v)}")
    return v


def ids(body: dict, *keys: str) -> list[str]:
    """Required ID fields: NetworkID and EndpointID are Docker's 64 hex digits
    (a '/' in one would alias another's store key); PoolID is the IPAM's own
    (``LocalDefault/10.1.0.0/24``), looked up as given."""
    out = []
    for k in keys:
        v = get_str(body, k, required=True)
        if k == "PoolID":
            validate.option_value(v, k, err=errors.InvalidRequest)
        else:
            validate.docker_id(v, k)
        out.append(v)
    return out


# ------------------------------------------------------------ NetworkDriver
def ip_data_list(body: dict, key: str) -> list[IPData]:
    """``IPv4Data``/``IPv6Data`` -> [IPData]."""
    out = []
    for i, item in enumerate(get_list(body, key)):
        where = f"{key}[{i}]."
        if not isinstance(item, dict):
            raise errors.InvalidRequest(f"{key}[{i}] must be an object, not {_json_type(item)}")
        aux = get_dict(item, "AuxAddresses", where)
        for name, addr in aux.items():
            if not isinstance(addr, str):
                raise errors.InvalidRequest(f"{where}AuxAddresses.{name} must be a string")
            validate.option_key(name, f"{where}AuxAddresses name", err=errors.InvalidRequest)
            validate.ip_address(addr, f"{where}AuxAddresses.{name}", allow_prefix=True)
        pool = get_str(item, "Pool", where, required=True)
        validate.ip_network(pool, f"{where}Pool")
        gateway = get_str(item, "Gateway", where)
        if gateway:
            validate.ip_address(gateway, f"{where}Gateway", allow_prefix=True)
        space = get_str(item, "AddressSpace", where)
        if space:
            validate.address_space(space, f"{where}AddressSpace", err=errors.InvalidRequest)
        out.append(IPData(pool=pool, gateway=gateway, address_space=space,
                          aux_addresses=dict(aux)))
    return out


def create_network_args(body: dict) -> dict:
    """CreateNetwork body -> keyword arguments of Controller.create_network."""
    (network_id,) = ids(body, "NetworkID")
    options = get_dict(body, "Options")
    driver, drv_opts = driver_and_options(get_dict(options, OPT_GENERIC, "Options."))
    return dict(
        network_id=network_id,
        ipv4=ip_data_list(body, "IPv4Data"),
        ipv6=ip_data_list(body, "IPv6Data"),
        driver=driver,
        enable_ipv6=get_bool(options, OPT_ENABLE_IPV6, "Options."),
        internal=get_bool(options, OPT_INTERNAL, "Options."),
        options=drv_opts,
        created_by="docker",
    )


def allocate_network_args(body: dict) -> dict:
    """AllocateNetwork body (``{"NetworkID", "Options": {str: str}, "IPv4Data",
    "IPv6Data"}``, swarm managers only) -> keyword arguments of
    Controller.allocate_network.  The options are the flat driver options;
    ``pynet.driver`` picks the pynet driver as in CreateNetwork."""
    (network_id,) = ids(body, "NetworkID")
    driver, opts = driver_and_options(get_dict(body, "Options"))
    return dict(network_id=network_id, driver=driver, options=opts,
                ipv4=ip_data_list(body, "IPv4Data"), ipv6=ip_data_list(body, "IPv6Data"))


def render_allocate(allocated: dict) -> dict:
    """AllocateNetwork's answer: ``{"Options": {str: str}}`` (handed back by
    dockerd in CreateNetwork); ``{}`` options for a local-scope driver."""
    return {"Options": {str(k): str(v) for k, v in (allocated or {}).items()}}


def driver_and_options(raw: dict) -> tuple[str, dict]:
    """Docker's flat driver options (``-o key=value``: strings; scalars kept as
    given) -> (the pynet driver named by ``pynet.driver``, the other options),
    every key and value checked at the door."""
    opts = {}
    for k, v in raw.items():
        if isinstance(v, (dict, list)):
            raise errors.InvalidRequest(f"option {k} must be a scalar, not {_json_type(v)}")
        validate.option_key(k)
        opts[k] = v if v is None else validate.option_value(v, f"option {k}")
    driver_option_values(opts)
    driver = opts.pop(OPT_DRIVER, "") or DEFAULT_DRIVER
    if not isinstance(driver, str):
        raise errors.InvalidRequest(f"option {OPT_DRIVER} must be a string")
    return driver, opts


def driver_option_values(opts: dict) -> None:
    """The options that name interfaces or addresses, whatever the driver:
    refused here so that no driver (nor the firewall) ever sees them."""
    name = opts.get(OPT_BRIDGE_NAME)
    if name not in (None, ""):
        validate.ifname(str(name), f"bridge name (option {OPT_BRIDGE_NAME})", err=errors.InvalidOption)
    parent = opts.get(OPT_PARENT)
    if parent not in (None, ""):
        validate.ifname(str(parent).strip(), f"parent interface (option {OPT_PARENT})",
                        err=errors.InvalidOption)
    for key, version in ((OPT_HOST_BINDING, None), (OPT_HOST_IPV4, 4)):
        value = opts.get(key)
        if value not in (None, ""):
            validate.ip_address(str(value), f"option {key}", version=version, err=errors.InvalidOption)


def mac_from_option(value: Any) -> str:
    """``com.docker.network.endpoint.macaddress``: base64 of the 6 bytes
    (Go's json encoding of a net.HardwareAddr)."""
    if not value:
        return ""
    if not isinstance(value, str):
        raise errors.InvalidRequest(f"option {OPT_MAC} must be a string")
    try:
        raw = base64.b64decode(value, validate=True)
    except ValueError:
        raw = b""
    if len(raw) != 6:
        raise errors.InvalidRequest(f"option {OPT_MAC} is not base64 of a 6-byte MAC address")
    return ":".join(f"{b:02x}" for b in raw)


def port_mappings(options: dict) -> list[PortMapping]:
    """``com.docker.network.portmap`` -> [PortMapping] (host port 0 or a
    HostPort..HostPortEnd range: the controller chooses)."""
    out = []
    for i, pm in enumerate(get_list(options, OPT_PORTMAP, "Options.")):
        where = f"{OPT_PORTMAP}[{i}]."
        if not isinstance(pm, dict):
            raise errors.InvalidRequest(f"{OPT_PORTMAP}[{i}] must be an object")
        proto = _proto(pm, where)
        if not get_int(pm, "Port", where):
            raise errors.InvalidRequest(f"{where}Port is required")
        port, host_port, host_end = (
            validate.port(get_int(pm, name, where), f"{where}{name}", allow_zero=name != "Port",
                          err=errors.InvalidRequest)
            for name in ("Port", "HostPort", "HostPortEnd"))
        host_ip = get_str(pm, "HostIP", where)
        if host_ip:
            # it becomes an iptables token: no zone text, nothing but an address
            validate.ip_address(host_ip, f"{where}HostIP")
        out.append(PortMapping(proto=proto, container_port=port, host_port=host_port,
                               host_port_end=host_end if host_end != host_port else 0,
                               host_ip=host_ip))
    return out


def exposed_ports(options: dict) -> list[dict]:
    """``com.docker.network.endpoint.exposedports`` -> [{"proto", "port"}]."""
    out = []
    for i, tp in enumerate(get_list(options, OPT_EXPOSED, "Options.")):
        where = f"{OPT_EXPOSED}[{i}]."
        if not isinstance(tp, dict):
            raise errors.InvalidRequest(f"{OPT_EXPOSED}[{i}] must be an object")
        out.append({"proto": _proto(tp, where), "port": get_int(tp, "Port", where)})
    return out


def _proto(d: dict, where: str) -> str:
    n = get_int(d, "Proto", where)
    try:
        return PROTO_BY_NUMBER[n]
    except KeyError:
        raise errors.InvalidRequest(f"{where}Proto {n} is not tcp (6), udp (17) or sctp (132)") from None


def create_endpoint_args(body: dict) -> tuple[dict, dict]:
    """CreateEndpoint body -> (Controller.create_endpoint kwargs, the
    Interface fields Docker sent)."""
    network_id, endpoint_id = ids(body, "NetworkID", "EndpointID")
    iface = get_dict(body, "Interface")
    options = get_dict(body, "Options")
    sent = {
        "Address": get_str(iface, "Address", "Interface."),
        "AddressIPv6": get_str(iface, "AddressIPv6", "Interface."),
        "MacAddress": get_str(iface, "MacAddress", "Interface."),
    }
    for wire, version in (("Address", 4), ("AddressIPv6", 6)):
        if sent[wire]:
            validate.ip_interface(sent[wire], f"Interface.{wire}", version=version)
    if sent["MacAddress"]:
        validate.mac(sent["MacAddress"], "Interface.MacAddress")
    mac = sent["MacAddress"] or mac_from_option(options.get(OPT_MAC))
    kwargs = dict(network_id=network_id, endpoint_id=endpoint_id,
                  address=sent["Address"], address_v6=sent["AddressIPv6"], mac=mac,
                  ports=port_mappings(options), exposed=exposed_ports(options))
    return kwargs, sent


def sandbox_key(body: dict) -> str:
    """Join's ``SandboxKey``: a path (``/var/run/docker/netns/<id>``), or empty."""
    key = get_str(body, "SandboxKey")
    if key:
        validate.abs_path(key, "SandboxKey", err=errors.InvalidRequest)
    return key


def render_create_endpoint(ep: Endpoint, sent: dict) -> dict:
    """Answer only what Docker did not choose itself: libnetwork refuses a
    driver that changes an address (or MAC) it already set."""
    iface = {}
    for wire, mine in (("Address", ep.address), ("AddressIPv6", ep.address_v6),
                       ("MacAddress", ep.mac)):
        if mine and not sent.get(wire):
            iface[wire] = mine
    return {"Interface": iface} if iface else {}


def render_join(info: JoinInfo) -> dict:
    out: dict[str, Any] = {
        "InterfaceName": {"SrcName": info.src_name, "DstPrefix": info.dst_prefix or "eth"},
        "StaticRoutes": [{"Destination": r.destination, "RouteType": r.route_type,
                          "NextHop": r.next_hop} for r in info.static_routes],
        "DisableGatewayService": bool(info.disable_gateway_service),
    }
    if info.gateway:
        out["Gateway"] = info.gateway.split("/")[0]
    if info.gateway_v6:
        out["GatewayIPv6"] = info.gateway_v6.split("/")[0]
    return out


# ---------------------------------------------------------------- IpamDriver
def request_pool_args(body: dict) -> dict:
    options = get_dict(body, "Options")
    space = get_str(body, "AddressSpace")
    if space:
        validate.address_space(space, "AddressSpace", err=errors.InvalidRequest)
    return dict(address_space=space,
                pool=get_str(body, "Pool"), sub_pool=get_str(body, "SubPool"),
                options=_string_map(options, "Options"), v6=get_bool(body, "V6"))


def request_address_args(body: dict) -> dict:
    (pool_id,) = ids(body, "PoolID")
    options = _string_map(get_dict(body, "Options"), "Options")
    return dict(pool_id=pool_id, address=get_str(body, "Address"), options=options)


def _string_map(d: dict, where: str) -> dict:
    for k, v in d.items():
        if not isinstance(v, str):
            raise errors.InvalidRequest(f"{where}.{k} must be a string, not {_json_type(v)}")
        validate.option_key(k, f"{where} name")
        validate.option_value(v, f"{where}.{k}")
    return dict(d)


def render_address_spaces(spaces: Any) -> dict:
    """The IPAM's address spaces -> GetDefaultAddressSpaces answer."""
    if isinstance(spaces, (tuple, list)) and len(spaces) == 2:
        local, glob = spaces
    elif isinstance(spaces, dict):
        local = (spaces.get("LocalDefaultAddressSpace") or spaces.get("local")
                 or spaces.get("local_default") or "")
        glob = (spaces.get("GlobalDefaultAddressSpace") or spaces.get("global")
                or spaces.get("global_default") or "")
    else:
        raise errors.Internal(f"IPAM returned unexpected address spaces {spaces!r}")
    return {"LocalDefaultAddressSpace": local, "GlobalDefaultAddressSpace": glob}


def render_pool(pool_id: str, pool: str, data: Optional[dict]) -> dict:
    return {"PoolID": pool_id, "Pool": pool,
            "Data": {str(k): str(v) for k, v in (data or {}).items()}}

"""
The wire side of the Docker driver: Klein routes for libnetwork's remote
NetworkDriver and IpamDriver calls, their JSON checked into typed
requests, and errors answered in each protocol's own field.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Protocol

import attr
from klein import Klein
from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from contivd.cnm.driver import DST_PREFIX, Driver
from contivd.errors import Conflict, ContivError, NotFound, ValidationError

log = Logger()

NETWORK = "NetworkDriver"
IPAM = "IpamDriver"
#: How long one call may take before Docker gets an error instead.
CALL_DEADLINE = 20.0


class Fields:
    """
    Typed access to a request body, each failure naming its field.

    @raise ValidationError: from each getter, for a missing field or one
        of the wrong type.
    """

    def __init__(self, body: dict[str, Any], prefix: str = "") -> None:
        self._body = body
        self._prefix = prefix

    def _get(self, name: str, kind: type, what: str, required: bool,
             default: Any) -> Any:
        value = self._body.get(name)
        field = self._prefix + name
        if value is None:
            if required:
                raise ValidationError(field, "is missing")
            return default
        if not isinstance(value, kind) or (kind is int
                                           and isinstance(value, bool)):
            raise ValidationError(
                field, f"must be {what}, not {json.dumps(value)}")
        return value

    def text(self, name: str, required: bool = False) -> str:
        """A string field; C{""} when absent and not required."""
        value = self._get(name, str, "a string", required, "")
        if required and not value:
            raise ValidationError(self._prefix + name, "is empty")
        return value

    def flag(self, name: str) -> bool:
        return self._get(name, bool, "true or false", False, False)

    def mapping(self, name: str) -> dict[str, Any]:
        return self._get(name, dict, "a JSON object", False, {})

    def strings(self, name: str) -> dict[str, str]:
        """A map of strings to strings, like IPAM Options."""
        value = self.mapping(name)
        for key, item in value.items():
            if not isinstance(item, str):
                raise ValidationError(
                    f"{self._prefix}{name}.{key}",
                    f"must be a string, not {json.dumps(item)}")
        return value

    def nested(self, name: str) -> Fields:
        return Fields(self.mapping(name), f"{self._prefix}{name}.")

    def items(self, name: str) -> list[Fields]:
        value = self._get(name, list, "a JSON list", False, [])
        out = []
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                raise ValidationError(f"{self._prefix}{name}[{i}]",
                                      "must be a JSON object")
            out.append(Fields(item, f"{self._prefix}{name}[{i}]."))
        return out


@attr.s(frozen=True, auto_attribs=True)
class PoolRequest:
    pool: str
    sub_pool: str
    options: dict[str, str]
    v6: bool

    @classmethod
    def parse(cls, f: Fields) -> PoolRequest:
        f.text("AddressSpace")
        return cls(f.text("Pool"), f.text("SubPool"), f.strings("Options"),
                   f.flag("V6"))


@attr.s(frozen=True, auto_attribs=True)
class PoolIdRequest:
    pool_id: str

    @classmethod
    def parse(cls, f: Fields) -> PoolIdRequest:
        return cls(f.text("PoolID", required=True))


@attr.s(frozen=True, auto_attribs=True)
class AddressRequest:
    pool_id: str
    address: str
    options: dict[str, str]

    @classmethod
    def parse(cls, f: Fields) -> AddressRequest:
        return cls(f.text("PoolID", required=True), f.text("Address"),
                   f.strings("Options"))


@attr.s(frozen=True, auto_attribs=True)
class ReleaseAddressRequest:
    pool_id: str
    address: str

    @classmethod
    def parse(cls, f: Fields) -> ReleaseAddressRequest:
        return cls(f.text("PoolID", required=True),
                   f.text("Address", required=True))


@attr.s(frozen=True, auto_attribs=True)
class NetworkRequest:
    network_id: str
    options: dict[str, Any]
    pools: list[tuple[str, str]]

    @classmethod
    def parse(cls, f: Fields) -> NetworkRequest:
        pools = [(p.text("Pool", required=True), p.text("Gateway"))
                 for p in f.items("IPv4Data")]
        f.items("IPv6Data")
        return cls(f.text("NetworkID", required=True), f.mapping("Options"),
                   pools)


@attr.s(frozen=True, auto_attribs=True)
class NetworkIdRequest:
    network_id: str

    @classmethod
    def parse(cls, f: Fields) -> NetworkIdRequest:
        return cls(f.text("NetworkID", required=True))


@attr.s(frozen=True, auto_attribs=True)
class EndpointRequest:
    network_id: str
    endpoint_id: str

    @classmethod
    def parse(cls, f: Fields) -> EndpointRequest:
        f.mapping("Options")
        return cls(f.text("NetworkID", required=True),
                   f.text("EndpointID", required=True))


@attr.s(frozen=True, auto_attribs=True)
class CreateEndpointRequest:
    network_id: str
    endpoint_id: str
    address: str
    mac: str

    @classmethod
    def parse(cls, f: Fields) -> CreateEndpointRequest:
        iface = f.nested("Interface")
        iface.text("AddressIPv6")
        f.mapping("Options")
        return cls(f.text("NetworkID", required=True),
                   f.text("EndpointID", required=True),
                   iface.text("Address"), iface.text("MacAddress"))


@attr.s(frozen=True, auto_attribs=True)
class JoinRequest:
    network_id: str
    endpoint_id: str
    sandbox_key: str

    @classmethod
    def parse(cls, f: Fields) -> JoinRequest:
        f.mapping("Options")
        return cls(f.text("NetworkID", required=True),
                   f.text("EndpointID", required=True),
                   f.text("SandboxKey"))


@attr.s(frozen=True, auto_attribs=True)
class Empty:
    """A call whose body, if any, carries nothing we use."""

    @classmethod
    def parse(cls, f: Fields) -> Empty:
        return cls()


#: The largest request body taken; Docker's calls are a few hundred bytes.
MAX_BODY = 64 * 1024


def decode(body: bytes) -> Fields:
    """
    A request body as L{Fields}; an empty body is an empty object.

    @raise ValidationError: when it is not a JSON object.
    """
    if not body.strip():
        return Fields({})
    if len(body) > MAX_BODY:
        raise ValidationError("body", f"is over {MAX_BODY} bytes; Docker's "
                              "calls are small JSON objects")
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise ValidationError("body", f"is not JSON ({e}); send a JSON "
                              "object") from None
    if not isinstance(value, dict):
        raise ValidationError("body", "must be a JSON object")
    return Fields(value)


def status_of(failure: Failure) -> int:
    """The HTTP status that tells Docker what kind of failure this is."""
    if failure.check(ValidationError):
        return 400
    if failure.check(NotFound):
        return 404
    if failure.check(Conflict):
        return 409
    if failure.check(TimeoutError, CancelledError):
        return 504
    return 500


class _Request(Protocol):
    """A request type: built from a call's body by C{parse}."""

    @classmethod
    def parse(cls, f: Fields) -> Any: ...


#: Every call: (protocol, request type, name of the DriverAPI method).
CALLS: dict[str, tuple[str, type[_Request], str]] = {
    "Plugin.Activate": ("", Empty, "activate"),
    "Plugin.Deactivate": ("", Empty, "deactivate"),
    "NetworkDriver.GetCapabilities": (NETWORK, Empty, "capabilities"),
    "NetworkDriver.CreateNetwork": (NETWORK, NetworkRequest,
                                    "create_network"),
    "NetworkDriver.DeleteNetwork": (NETWORK, NetworkIdRequest,
                                    "delete_network"),
    "NetworkDriver.AllocateNetwork": (NETWORK, NetworkRequest,
                                      "allocate_network"),
    "NetworkDriver.FreeNetwork": (NETWORK, NetworkIdRequest, "ok"),
    "NetworkDriver.CreateEndpoint": (NETWORK, CreateEndpointRequest,
                                     "create_endpoint"),
    "NetworkDriver.DeleteEndpoint": (NETWORK, EndpointRequest,
                                     "delete_endpoint"),
    "NetworkDriver.EndpointOperInfo": (NETWORK, EndpointRequest,
                                       "endpoint_info"),
    "NetworkDriver.Join": (NETWORK, JoinRequest, "join"),
    "NetworkDriver.Leave": (NETWORK, EndpointRequest, "leave"),
    "NetworkDriver.ProgramExternalConnectivity": (NETWORK, EndpointRequest,
                                                  "ok"),
    "NetworkDriver.RevokeExternalConnectivity": (NETWORK, EndpointRequest,
                                                 "ok"),
    "NetworkDriver.DiscoverNew": (NETWORK, Empty, "ok"),
    "NetworkDriver.DiscoverDelete": (NETWORK, Empty, "ok"),
    "IpamDriver.GetCapabilities": (IPAM, Empty, "ipam_capabilities"),
    "IpamDriver.GetDefaultAddressSpaces": (IPAM, Empty, "address_spaces"),
    "IpamDriver.RequestPool": (IPAM, PoolRequest, "request_pool"),
    "IpamDriver.ReleasePool": (IPAM, PoolIdRequest, "release_pool"),
    "IpamDriver.RequestAddress": (IPAM, AddressRequest, "request_address"),
    "IpamDriver.ReleaseAddress": (IPAM, ReleaseAddressRequest,
                                  "release_address"),
}


class DriverAPI:
    """
    Turns typed requests into L{Driver} calls and their results into
    the answer libnetwork expects; each method returns a JSON-ready
    dict, or a Deferred of one.
    """

    def __init__(self, driver: Driver) -> None:
        self.driver = driver

    def activate(self, _: Empty) -> dict[str, Any]:
        return {"Implements": [NETWORK, IPAM]}

    def deactivate(self, _: Empty) -> dict[str, Any]:
        return {}

    def ok(self, _: Any) -> dict[str, Any]:
        return {}

    def capabilities(self, _: Empty) -> dict[str, Any]:
        return {"Scope": "local", "ConnectivityScope": "global"}

    def ipam_capabilities(self, _: Empty) -> dict[str, Any]:
        return {"RequiresMACAddress": False, "RequiresRequestReplay": False}

    def address_spaces(self, _: Empty) -> dict[str, Any]:
        return {"LocalDefaultAddressSpace": "contiv-local",
                "GlobalDefaultAddressSpace": "contiv-global"}

    def allocate_network(self, r: NetworkRequest) -> dict[str, Any]:
        raise ValidationError(
            "AllocateNetwork", "swarm-scope networks are not supported by "
            "contiv; create a local network (docker network create -d "
            "contiv) on each host, or with contivctl net create")

    def create_network(self, r: NetworkRequest) -> Deferred[dict]:
        return _empty(self.driver.create_network(r.network_id, r.options,
                                                 r.pools))

    def delete_network(self, r: NetworkIdRequest) -> Deferred[dict]:
        return _empty(self.driver.delete_network(r.network_id))

    def create_endpoint(self, r: CreateEndpointRequest) -> Deferred[dict]:
        d = self.driver.create_endpoint(r.network_id, r.endpoint_id,
                                        r.address, r.mac)
        return d.addCallback(lambda mac: {"Interface": {"MacAddress": mac}}
                             if mac else {})

    def delete_endpoint(self, r: EndpointRequest) -> Deferred[dict]:
        return _empty(self.driver.delete_endpoint(r.network_id,
                                                  r.endpoint_id))

    def endpoint_info(self, r: EndpointRequest) -> dict[str, Any]:
        return {"Value": {}}

    def join(self, r: JoinRequest) -> Deferred[dict]:
        d = self.driver.join(r.network_id, r.endpoint_id)
        return d.addCallback(lambda info: {
            "InterfaceName": {"SrcName": info.src_name,
                              "DstPrefix": DST_PREFIX},
            "Gateway": info.gateway,
            "DisableGatewayService": False})

    def leave(self, r: EndpointRequest) -> Deferred[dict]:
        return _empty(self.driver.leave(r.network_id, r.endpoint_id))

    def request_pool(self, r: PoolRequest) -> Deferred[dict]:
        d = self.driver.request_pool(r.pool, r.sub_pool, r.options, r.v6)
        return d.addCallback(lambda pool: {"PoolID": pool.pool_id,
                                           "Pool": pool.pool, "Data": {}})

    def release_pool(self, r: PoolIdRequest) -> Deferred[dict]:
        return _empty(self.driver.release_pool(r.pool_id))

    def request_address(self, r: AddressRequest) -> Deferred[dict]:
        d = self.driver.request_address(r.pool_id, r.address, r.options)
        return d.addCallback(lambda address: {"Address": address,
                                              "Data": {}})

    def release_address(self, r: ReleaseAddressRequest) -> Deferred[dict]:
        return _empty(self.driver.release_address(r.pool_id, r.address))


def _empty(d: Deferred[Any]) -> Deferred[dict]:
    return d.addCallback(lambda _: {})


def _answer(request: Any, code: int, value: dict[str, Any]) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    return json.dumps(value).encode() + b"\n"


def _error_field(protocol: str) -> str:
    return "Error" if protocol == IPAM else "Err"


class PluginApp:
    """
    The Klein app Docker talks to: one POST route per call of L{CALLS},
    and a 404 for any other path.
    """

    app = Klein()

    def __init__(self, api: DriverAPI, clock: IReactorTime,
                 deadline: float = CALL_DEADLINE) -> None:
        self.api = api
        self.clock = clock
        self.deadline = deadline

    def resource(self) -> Any:
        return self.app.resource()

    def dispatch(self, request: Any, call: str) -> Deferred[bytes] | bytes:
        """Check and run one call; every answer is JSON."""
        protocol, kind, method = CALLS[call]
        body = (request.content.read(MAX_BODY + 1) if request.content
                else b"")
        log.debug("{call} {body}", call=call, body=body[:2000])
        try:
            typed = kind.parse(decode(body))
            handler: Callable[[Any], Any] = getattr(self.api, method)
            result = handler(typed)
        except Exception:
            return self._failed(Failure(), request, call, protocol)
        if not isinstance(result, Deferred):
            return _answer(request, 200, result)
        result.addTimeout(self.deadline, self.clock)
        result.addCallback(lambda value: _answer(request, 200, value))
        result.addErrback(self._failed, request, call, protocol)
        return result

    def _failed(self, failure: Failure, request: Any, call: str,
                protocol: str) -> bytes:
        code = status_of(failure)
        if failure.check(TimeoutError, CancelledError):
            message = (f"{call} took longer than {self.deadline:.0f} s "
                       "(etcd or OVSDB slow or away); retry, and check "
                       "contivctl status")
        else:
            message = str(failure.value) or type(failure.value).__name__
        if code >= 500 and not failure.check(ContivError, TimeoutError,
                                             CancelledError):
            log.failure("{call} failed: {message}", failure, call=call,
                        message=message)
        elif code >= 500:
            log.error("{call} failed: {message}", call=call,
                      message=message)
        else:
            log.info("{call} refused ({code}): {message}", call=call,
                     code=code, message=message)
        return _answer(request, code, {_error_field(protocol): message})

    @app.route("/<string:call>", methods=["POST"])
    def call(self, request: Any, call: str) -> Deferred[bytes] | bytes:
        if call not in CALLS:
            return self.unknown(request, call)
        return self.dispatch(request, call)

    @app.route("/", branch=True)
    def other(self, request: Any) -> bytes:
        path = request.path.decode("utf-8", "replace").lstrip("/")
        if path in CALLS and request.method != b"POST":
            protocol = CALLS[path][0]
            return _answer(request, 405, {_error_field(protocol):
                                          f"{path} takes POST only"})
        return self.unknown(request, path)

    def unknown(self, request: Any, path: str) -> bytes:
        protocol = IPAM if path.startswith(IPAM + ".") else NETWORK
        log.info("unknown call {path}", path=path)
        return _answer(request, 404, {_error_field(protocol): (
            f"{path} is not a call of the contiv driver; it serves "
            "Plugin.Activate, NetworkDriver.* and IpamDriver.* of "
            "libnetwork's remote driver protocol")})

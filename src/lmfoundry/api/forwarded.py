"""The client's address behind reverse proxies (`LMFOUNDRY_TRUSTED_PROXIES`).

`X-Forwarded-For` is written by whoever sends it, so it counts only when the peer is a
listed proxy, and then only as far as the chain of listed proxies goes: walking the header
from the right (each proxy appends the address it saw), the first address that is not a
listed proxy is the client. Anything to the left of it came from the client and is ignored,
so a spoofed header changes nothing. uvicorn's own `--proxy-headers` (which trusts
127.0.0.1 by default) is off in `lmfoundry up`; this middleware replaces it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

from starlette.types import ASGIApp, Receive, Scope, Send

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
_WEBSOCKET = {"http": "ws", "https": "wss"}


def parse_address(text: str) -> Address | None:
    """An address as proxies write it: `192.0.2.1`, `192.0.2.1:4711`, `2001:db8::1`,
    `[2001:db8::1]:4711`; None for anything else (`unknown`, obfuscated names)."""
    text = text.strip()
    if text.startswith("["):
        text = text[1 : text.find("]")] if "]" in text else ""
    elif text.count(":") == 1:  # IPv4 with a port
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


class TrustedProxies:
    def __init__(self, networks: Iterable[str]) -> None:
        self.networks: tuple[Network, ...] = tuple(
            ipaddress.ip_network(n, strict=False) for n in networks
        )

    def __bool__(self) -> bool:
        return bool(self.networks)

    def trusts(self, address: Address | None) -> bool:
        return address is not None and any(address in n for n in self.networks)

    def client(self, peer: str, forwarded_for: Sequence[str]) -> str:
        """The client address of a request from `peer` with these `X-Forwarded-For` header
        values (in the order received)."""
        current = parse_address(peer)
        if not self.trusts(current):
            return peer
        hops = [hop for value in forwarded_for for hop in value.split(",")]
        for hop in reversed(hops):
            address = parse_address(hop)
            if address is None:
                # A listed proxy passed on something that is no address: the client is the
                # last address known for sure (that proxy's peer), never a guess.
                break
            current = address
            if not self.trusts(address):
                break
        return str(current)


class ForwardedClient:
    """Sets `scope["client"]` (and `scope["scheme"]` from `X-Forwarded-Proto`) from the
    headers of trusted proxies, so the throttle, the logs and the cookies' Secure flag see
    the client rather than the proxy. Without trusted proxies it does nothing."""

    def __init__(self, app: ASGIApp, trusted: Iterable[str] = ()) -> None:
        self.app = app
        self.trusted = TrustedProxies(trusted)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.trusted and scope["type"] in ("http", "websocket"):
            host, port = scope.get("client") or ("", 0)
            if self.trusted.trusts(parse_address(host)):
                forwarded = [
                    v.decode("latin-1") for k, v in scope["headers"] if k == b"x-forwarded-for"
                ]
                if forwarded:
                    scope["client"] = (self.trusted.client(host, forwarded), port)
                proto = [v for k, v in scope["headers"] if k == b"x-forwarded-proto"]
                if proto:
                    scheme = proto[-1].decode("latin-1").split(",")[-1].strip().lower()
                    if scheme in ("http", "https"):
                        websocket = scope["type"] == "websocket"
                        scope["scheme"] = _WEBSOCKET[scheme] if websocket else scheme
        await self.app(scope, receive, send)

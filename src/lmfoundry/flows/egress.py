"""Where a sandboxed flow process may connect: an HTTP(S) proxy that enforces a list.

A sandboxed flow process has a network namespace of its own with only loopback in it. Its one
way out is a Unix socket in its working folder, served here, on the server's side; a forwarder
inside (process.py) listens on the sandbox's 127.0.0.1 and passes each connection to it, and
HTTP_PROXY / HTTPS_PROXY point flow code there (`requests`, `httpx`, urllib all honour them).

The list: the hosts (host and port) named by the URLs in the flow's connections' configs, and
lmfoundry's own public URL. Even those are refused when they resolve to a link-local address
(cloud metadata services) or to the database, Redis or Ray the server uses.

Why our own small proxy rather than a library: what is needed is plain HTTP/1.1 proxying
(CONNECT, and absolute-URI requests for http://) with one check on the destination, on the
server's event loop. The maintained Python proxies (proxy.py, mitmproxy) are whole proxy
servers with their own processes, plugin systems and TLS interception, far more to operate
and to trust than the ~150 lines below.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlsplit

from lmfoundry.config import Settings
from lmfoundry.connections.models import ResolvedConnection

logger = logging.getLogger(__name__)

HEAD_LIMIT = 64 * 1024  # bytes of a request line and headers
CONNECT_TIMEOUT = 30.0  # seconds to reach an allowed host
DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
# Cloud metadata services and other link-local addresses; never reachable from a flow.
DENIED_NETWORKS = tuple(
    ipaddress.ip_network(n) for n in ("169.254.0.0/16", "fe80::/10", "fd00:ec2::254/128")
)
HOP_HEADERS = {"connection", "keep-alive", "proxy-connection", "proxy-authorization", "te"}
Address = tuple[str, int]


class Refused(Exception):
    """The destination is not on the flow's list; the message says which and why."""


def _host_port(url: str) -> Address | None:
    try:
        parts = urlsplit(url.strip())
        port = parts.port or DEFAULT_PORTS.get(parts.scheme.lower())
    except ValueError:
        return None
    if parts.scheme.lower() not in DEFAULT_PORTS or not parts.hostname or port is None:
        return None
    return parts.hostname.lower().rstrip("."), port


def _service_address(value: str | None, default_port: int) -> Address | None:
    """host:port of a service URL (redis://h:p/0, postgresql://u@h:p/db) or bare address."""
    if not value:
        return None
    parts = urlsplit(value if "://" in value else f"tcp://{value}")
    try:
        port = parts.port or default_port
    except ValueError:
        return None
    return (parts.hostname, port) if parts.hostname else None


def _key(ip: str, port: int) -> Address:
    address = ipaddress.ip_address(ip)
    return ("loopback" if address.is_loopback else address.compressed, port)


class EgressPolicy:
    def __init__(self, allowed: Iterable[Address], denied: Iterable[Address]) -> None:
        self.allowed = frozenset(allowed)
        self.denied = list(denied)  # service addresses, resolved on first use
        self._denied_keys: set[Address] | None = None

    @classmethod
    def of(cls, connections: dict[str, ResolvedConnection], settings: Settings) -> EgressPolicy:
        allowed = {a for a in [_host_port(settings.base_url)] if a}
        for connection in connections.values():
            for value in connection.configs.values():
                if isinstance(value, str) and (address := _host_port(value)):
                    allowed.add(address)
        database = settings.resolved_database_url
        denied = [
            _service_address(settings.redis_url, 6379),
            _service_address(settings.ray_address, 6379),
            _host_port(settings.ray_dashboard_url or ""),
            None if database.startswith("sqlite") else _service_address(database, 5432),
        ]
        return cls(allowed, [d for d in denied if d])

    async def _resolve(self, host: str, port: int) -> list[str]:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise Refused(f"{host} does not resolve: {exc}") from exc
        return [str(info[4][0]) for info in infos]

    async def destination(self, host: str, port: int) -> str:
        """The address to connect to for host:port, or Refused."""
        name = host.lower().rstrip(".").strip("[]")
        if (name, port) not in self.allowed:
            raise Refused(
                f"{name}:{port} is not named by any connection of this flow (nor is it "
                "lmfoundry's public URL); a flow reaches only the hosts in its connections' "
                "configs, so add its URL to a connection the flow uses."
            )
        if self._denied_keys is None:
            keys: set[Address] = set()
            for service_host, service_port in self.denied:
                with contextlib.suppress(Refused):
                    for ip in await self._resolve(service_host, service_port):
                        keys.add(_key(ip, service_port))
            self._denied_keys = keys
        for ip in await self._resolve(name, port):
            address = ipaddress.ip_address(ip)
            if any(address in network for network in DENIED_NETWORKS):
                raise Refused(f"{name}:{port} is a link-local address, which flows cannot reach.")
            if _key(ip, port) in self._denied_keys:
                raise Refused(
                    f"{name}:{port} is the database, Redis or Ray lmfoundry uses, which flows "
                    "cannot reach."
                )
            return ip
        raise Refused(f"{name} does not resolve.")


class EgressProxy:
    """The proxy of one flow process, on a Unix socket at `path`."""

    def __init__(self, policy: EgressPolicy, path: Path) -> None:
        self.policy = policy
        self.path = path
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))

    def close(self) -> None:
        """Stop listening and end every connection (nothing to wait for)."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(OSError):
            self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            await self._proxy(reader, writer)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # the flow or the remote host hung up; nothing to answer
        finally:
            if task is not None:
                self._tasks.discard(task)
            writer.close()

    async def _proxy(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        if len(head) > HEAD_LIMIT:
            return await _answer(writer, 431, "The request head is too large.")
        request_line, *headers = head.decode("latin-1").split("\r\n")
        try:
            method, target, version = request_line.split(" ")
        except ValueError:
            return await _answer(writer, 400, "Not an HTTP/1.1 proxy request.")
        tunnel = method.upper() == "CONNECT"
        if tunnel:
            host, _, port_text = target.rpartition(":")
            path = ""
        else:
            parts = urlsplit(target)
            if parts.scheme.lower() != "http" or not parts.hostname:
                return await _answer(
                    writer, 400, "Send https:// through CONNECT and http:// as an absolute URI."
                )
            host, port_text = parts.hostname, str(parts.port or 80)
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        if not port_text.isdigit():
            return await _answer(writer, 400, f"{target} names no port.")
        port = int(port_text)
        try:
            ip = await self.policy.destination(host, port)
        except Refused as exc:
            logger.info("flow egress refused: %s", exc)
            return await _answer(writer, 403, f"lmfoundry refused the connection: {exc}")
        try:
            upstream_reader, upstream_writer = await asyncio.wait_for(
                asyncio.open_connection(ip, port), CONNECT_TIMEOUT
            )
        except (OSError, TimeoutError) as exc:
            return await _answer(writer, 502, f"{host}:{port} cannot be reached: {exc}")
        if tunnel:
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        else:
            # One request per connection: a client reusing it for another host would
            # otherwise reach this one instead.
            kept = [
                h for h in headers if h and h.split(":", 1)[0].strip().lower() not in HOP_HEADERS
            ]
            lines = [f"{method} {path} {version}", *kept, "Connection: close", "", ""]
            upstream_writer.write("\r\n".join(lines).encode("latin-1"))
        try:
            await asyncio.gather(_pipe(reader, upstream_writer), _pipe(upstream_reader, writer))
        finally:
            upstream_writer.close()


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    try:
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()
        if sink.can_write_eof():
            sink.write_eof()
    except OSError:
        sink.close()


async def _answer(writer: asyncio.StreamWriter, status: int, message: str) -> None:
    reasons = {400: "Bad Request", 403: "Forbidden", 431: "Too Large", 502: "Bad Gateway"}
    body = (message + "\n").encode()
    writer.write(
        f"HTTP/1.1 {status} {reasons[status]}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body
    )
    await writer.drain()

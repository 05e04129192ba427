"""The failed-authentication throttle behind proxies, against the real server over loopback:
X-Forwarded-For counts only from LMFOUNDRY_TRUSTED_PROXIES, failures are counted per client
address and per credential prefix, and neither locks out other clients."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from lmfoundry.api.forwarded import TrustedProxies
from tests.conftest import ADMIN_TOKEN, LiveServer, start_server, stop_server

pytestmark = pytest.mark.slow

LIMIT = 5  # LMFOUNDRY_AUTH_FAILURES_PER_MINUTE for these servers


def start(tmp_path_factory: pytest.TempPathFactory, name: str, **env: str) -> LiveServer:
    home = tmp_path_factory.mktemp(name) / "home"
    return start_server(home, env={"LMFOUNDRY_AUTH_FAILURES_PER_MINUTE": str(LIMIT), **env})


@pytest.fixture(scope="module")
def direct(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """No trusted proxies: the peer (127.0.0.1) is the client, whatever headers say."""
    server = start(tmp_path_factory, "direct")
    yield server
    stop_server(server)


@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """Behind a proxy on loopback that is listed in LMFOUNDRY_TRUSTED_PROXIES."""
    server = start(tmp_path_factory, "proxied", LMFOUNDRY_TRUSTED_PROXIES="10.9.0.0/16,127.0.0.1")
    yield server
    stop_server(server)


def me(server: LiveServer, token: str, forwarded_for: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"}
    if forwarded_for is not None:
        headers["X-Forwarded-For"] = forwarded_for
    return httpx.get(server.url + "/api/v1/me", headers=headers, timeout=30)


def wrong(n: int, prefix: str = "lmf_pat_") -> str:
    """A wrong token; the ones with the same `prefix` share their first 12 characters."""
    return f"{prefix}{n:040d}"[:12] + f"{n:040d}"


def test_a_spoofed_forwarded_for_does_not_change_the_throttled_address(
    direct: LiveServer,
) -> None:
    for n in range(LIMIT):  # every guess claims to come from somewhere else
        guess = me(direct, wrong(n, prefix=f"lmf_{n:04d}"), forwarded_for=f"198.51.100.{n}")
        assert guess.status_code == 401
    locked = me(direct, ADMIN_TOKEN, forwarded_for="192.0.2.200")
    assert locked.status_code == 429
    assert "from 127.0.0.1" in locked.json()["error"]["message"]
    assert int(locked.headers["retry-after"]) >= 1


def test_a_trusted_proxys_forwarded_for_is_honoured(proxied: LiveServer) -> None:
    guesser = "203.0.113.7"
    for n in range(LIMIT):
        guess = me(proxied, wrong(n, prefix=f"lmf_{n:04d}"), forwarded_for=guesser)
        assert guess.status_code == 401
    locked = me(proxied, ADMIN_TOKEN, forwarded_for=guesser)
    assert locked.status_code == 429 and f"from {guesser}" in locked.text
    # the guesser cannot get out by adding an address of its choice on the left: the proxy
    # appends the address it saw, and that is the one counted
    assert me(proxied, ADMIN_TOKEN, forwarded_for=f"198.51.100.1, {guesser}").status_code == 429
    # nor through a chain of trusted proxies, which are skipped from the right
    assert me(proxied, ADMIN_TOKEN, forwarded_for=f"{guesser}, 10.9.0.4").status_code == 429
    # another client behind the same proxy works on
    assert me(proxied, ADMIN_TOKEN, forwarded_for="203.0.113.8").status_code == 200
    assert me(proxied, ADMIN_TOKEN, forwarded_for="198.51.100.1, 203.0.113.8").status_code == 200


def test_failures_on_one_prefix_do_not_lock_another_client_out(proxied: LiveServer) -> None:
    prefix = "lmf_pat_Zz9q"  # guesses at one token whose prefix a listing showed
    for n in range(LIMIT):  # spread over addresses, so no address reaches the limit
        guess = me(proxied, wrong(n, prefix=prefix), forwarded_for=f"192.0.2.{n + 1}")
        assert guess.status_code == 401
    # the brute-forcer of that one token is stopped from a fresh address too
    stopped = me(proxied, wrong(99, prefix=prefix), forwarded_for="192.0.2.100")
    assert stopped.status_code == 429 and "with this token or key" in stopped.text
    # while the same addresses, with other tokens, are not locked out
    assert me(proxied, ADMIN_TOKEN, forwarded_for="192.0.2.1").status_code == 200
    assert me(proxied, ADMIN_TOKEN, forwarded_for="192.0.2.100").status_code == 200
    other = me(proxied, wrong(7, prefix="lmf_pat_Qq1w"), forwarded_for="192.0.2.101")
    assert other.status_code == 401


def test_the_forwarded_for_walk_from_the_right() -> None:
    proxies = TrustedProxies(["10.0.0.0/8", "2001:db8::/32"])
    assert proxies.client("192.0.2.1", ["203.0.113.5"]) == "192.0.2.1"  # untrusted peer
    assert proxies.client("10.0.0.2", ["203.0.113.5"]) == "203.0.113.5"
    assert proxies.client("10.0.0.2", ["6.6.6.6, 203.0.113.5, 10.1.1.1"]) == "203.0.113.5"
    assert proxies.client("10.0.0.2", ["6.6.6.6", "203.0.113.5:4711"]) == "203.0.113.5"
    assert proxies.client("2001:db8::9", ["[2001:db9::1]:443"]) == "2001:db9::1"
    assert proxies.client("::ffff:10.0.0.2", ["203.0.113.5"]) == "203.0.113.5"
    # a trusted hop that passed on no address: the last address known for sure
    assert proxies.client("10.0.0.2", ["203.0.113.5, garbage"]) == "10.0.0.2"
    assert proxies.client("10.0.0.2", []) == "10.0.0.2"

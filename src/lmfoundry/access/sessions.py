"""Studio sessions: what a signed-in browser holds instead of a personal access token.

Design (a choice, written down so it can be revisited):

- A session is a cookie, not a database row. Its value is a Fernet token (encrypted and
  authenticated, with a timestamp) under a key derived from the master key, holding the
  SHA-256 digest of the token the person signed in with and a random CSRF token. Nothing
  needs a table or a migration, and any server process sharing the master key accepts it.
- Every request re-checks the digest against the tokens and users tables, uncached
  (AccessService.authenticate_digest), so revoking a token, its expiry, or disabling or
  deleting its user ends every session opened with it at once, in every server process
  sharing the database. Signing out deletes the cookie; a copy of the
  cookie taken before that stays valid until it expires (SESSION_SECONDS) — the price of
  keeping no server-side state. Rows would allow revoking one session alone.
- The cookie is HttpOnly and SameSite=Strict (Secure on https): scripts cannot read it and
  other sites cannot make the browser send it. On top of that every mutating request made
  with the cookie must echo the session's CSRF token (`X-CSRF-Token` header or the
  `csrf_token` form field), which pages carry in a meta tag and hidden fields.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass

from cryptography.fernet import Fernet, InvalidToken

from lmfoundry.access.secrets import SecretBox, constant_time_equal, hash_token

COOKIE = "lmf_session"
SIGNIN_COOKIE = "lmf_signin"  # a pre-session CSRF token for the sign-in form (double submit)
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"
SESSION_SECONDS = 12 * 3600
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True)
class Session:
    token_digest: str
    csrf: str

    def csrf_matches(self, presented: str | None) -> bool:
        return bool(presented) and constant_time_equal(self.csrf, presented or "")


class SessionCodec:
    def __init__(self, box: SecretBox, lifetime: int = SESSION_SECONDS) -> None:
        self._fernet = Fernet(box.derive("studio-session"))
        self.lifetime = lifetime

    def issue(self, token: str) -> tuple[str, Session]:
        """A new session for `token` (already authenticated): the cookie value and the session."""
        session = Session(token_digest=hash_token(token), csrf=secrets.token_urlsafe(32))
        payload = json.dumps({"d": session.token_digest, "c": session.csrf}).encode()
        return self._fernet.encrypt(payload).decode(), session

    def open(self, cookie: str | None) -> Session | None:
        """The session in a cookie, or None when absent, forged, garbled or expired."""
        if not cookie:
            return None
        try:
            payload = json.loads(self._fernet.decrypt(cookie.encode(), ttl=self.lifetime))
            return Session(token_digest=str(payload["d"]), csrf=str(payload["c"]))
        except (InvalidToken, ValueError, KeyError, TypeError):
            return None

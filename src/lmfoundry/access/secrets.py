"""Secret material: random keys and tokens, encryption at rest, lookup digests.

Deployment keys and connection secrets are encrypted with a Fernet master key kept outside
the database (`$LMFOUNDRY_HOME/master.key`, mode 0600, or `LMFOUNDRY_MASTER_KEY`). Keys are
found by an HMAC of the presented value, so a lookup never decrypts and never compares
plaintext; tokens are stored as plain SHA-256 (they are 256-bit random, so no salt or
stretching is needed).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

TOKEN_PREFIX = "lmf_pat_"


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def new_key() -> str:
    """A deployment key: 32 random bytes as 64 hex characters (Azure keys are hex too)."""
    return secrets.token_hex(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def constant_time_equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def load_master_key(home: Path, configured: str | None) -> bytes:
    """The configured key, or the one in `home/master.key`, created (0600) on first use."""
    if configured:
        key = configured.encode()
        Fernet(key)  # raises ValueError with a clear message when malformed
        return key
    path = home / "master.key"
    if path.exists():
        return path.read_bytes().strip()
    home.mkdir(parents=True, exist_ok=True)
    key = Fernet.generate_key()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key)
    return key


class SecretBox:
    def __init__(self, master_key: bytes) -> None:
        self._fernet = Fernet(master_key)
        self._mac_key = hashlib.sha256(b"lmfoundry-key-digest" + master_key).digest()
        self._derive_key = hashlib.sha256(b"lmfoundry-derive" + master_key).digest()

    def encrypt(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode()

    def decrypt(self, ciphertext: str) -> str:
        try:
            return self._fernet.decrypt(ciphertext.encode()).decode()
        except InvalidToken as exc:
            raise ValueError(
                "A stored secret cannot be decrypted with this master key; restore the "
                "master.key the data was written with (or LMFOUNDRY_MASTER_KEY)."
            ) from exc

    def digest(self, key: str) -> str:
        return hmac.new(self._mac_key, key.encode(), hashlib.sha256).hexdigest()

    def derive(self, purpose: str) -> bytes:
        """A Fernet key for one purpose (e.g. studio session cookies), derived from the
        master key, so a cookie can never be confused with a secret stored at rest."""
        digest = hmac.new(self._derive_key, purpose.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest)

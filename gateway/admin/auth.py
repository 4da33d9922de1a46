"""Admin API authentication: one bearer token (GATEWAY_ADMIN_TOKEN or GATEWAY_ADMIN_TOKEN_FILE), compared in
constant time. Without a token the admin port is never opened. (No FastAPI here: every worker loads this to decide
whether it may serve the admin port; the endpoints' dependency is in gateway/admin/state.py.)"""

from __future__ import annotations

import hashlib
import hmac

from gateway.settings import Settings

REALM = 'Bearer realm="gateway-admin"'


class AdminSetupError(Exception):
    """The admin API cannot start (no token, unreadable token file...); the message says why."""


def load_token(settings: Settings) -> bytes:
    """The admin token from GATEWAY_ADMIN_TOKEN or GATEWAY_ADMIN_TOKEN_FILE; exactly one must be set."""
    if settings.admin_token and settings.admin_token_file:
        raise AdminSetupError("both GATEWAY_ADMIN_TOKEN and GATEWAY_ADMIN_TOKEN_FILE are set; set one")
    if settings.admin_token_file:
        try:
            token = settings.admin_token_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise AdminSetupError(f"cannot read GATEWAY_ADMIN_TOKEN_FILE {settings.admin_token_file}: {exc}") from exc
        if not token:
            raise AdminSetupError(f"GATEWAY_ADMIN_TOKEN_FILE {settings.admin_token_file} is empty")
        return token.encode()
    if settings.admin_token and settings.admin_token.strip():
        return settings.admin_token.strip().encode()
    raise AdminSetupError("neither GATEWAY_ADMIN_TOKEN nor GATEWAY_ADMIN_TOKEN_FILE is set, and the admin port is "
                          "never opened without a token (GATEWAY_ADMIN_PORT=0 turns the admin API off)")


class BearerToken:
    """Checks ``Authorization: Bearer <token>`` headers against the admin token."""

    def __init__(self, token: bytes) -> None:
        self._digest = hashlib.sha256(token).digest()

    def accepts(self, authorization: bytes | None) -> bool:
        scheme, _, token = (authorization or b"").partition(b" ")
        # Constant time: digests of equal length compared with compare_digest, whatever was presented.
        ok = hmac.compare_digest(hashlib.sha256(token.strip()).digest(), self._digest)
        return ok and scheme.lower() == b"bearer"


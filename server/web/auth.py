"""Bearer-token roles of the management API, and the open-on-loopback rule."""

from __future__ import annotations

import hmac
import ipaddress
import logging
from collections.abc import Callable, Coroutine, Mapping
from typing import Annotated, Any

from fastapi import HTTPException, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from fedge.edge_client.errors import ConfigError

log = logging.getLogger("fedge.api")

ROLES = ("read", "admin")
BearerCredentials = Annotated[
    HTTPAuthorizationCredentials | None,
    Security(HTTPBearer(auto_error=False, description="a token from server.toml [api.tokens]")),
]


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class TokenAuth:
    """Bearer tokens mapped to a role; ``admin`` may do everything ``read`` may."""

    def __init__(self, tokens: Mapping[str, str], host: str):
        for token, role in tokens.items():
            if not isinstance(token, str) or not token or role not in ROLES:
                raise ConfigError(
                    f"api token entries must map a non-empty token to one of {ROLES}, "
                    f"got a token with role {role!r}"
                )
        self.tokens = {t.encode(): r for t, r in tokens.items()}
        self.host = host
        self.open = not tokens and is_loopback(host)
        if self.open:
            log.warning(
                "no API tokens configured: the management API is open to anyone who can "
                "reach %s (loopback only)",
                host,
            )
        elif not tokens:
            log.warning(
                "no API tokens configured and the server listens on %s: the management "
                "API refuses every request",
                host,
            )

    def role_of(self, token: str | None) -> str:
        """Role of a bearer token; HTTP 401/403 errors for missing, unknown or unusable ones."""
        if self.open:
            return "admin"
        if not self.tokens:
            raise HTTPException(
                403,
                f"the management API is disabled: no API tokens are configured "
                f"and the server listens on {self.host}, which is not loopback; "
                f"add [api.tokens] to server.toml",
            )
        challenge = {"WWW-Authenticate": "Bearer"}
        if not token:
            raise HTTPException(
                401, "missing bearer token: send 'Authorization: Bearer <token>'", headers=challenge
            )
        given = token.encode()
        role = None
        for known, known_role in self.tokens.items():
            if hmac.compare_digest(given, known):
                role = known_role
        if role is None:
            raise HTTPException(
                401,
                "invalid bearer token",
                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
        return role

    def require(self, need: str) -> Callable[..., Coroutine[Any, Any, str]]:
        """FastAPI dependency admitting tokens whose role covers ``need``."""

        async def check(creds: BearerCredentials) -> str:
            role = self.role_of(creds.credentials if creds else None)
            if need == "admin" and role != "admin":
                raise HTTPException(
                    403, "this route needs an admin token; the token given is read-only"
                )
            return role

        return check

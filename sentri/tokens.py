"""Sentri access tokens: HS256 JWTs (docs/auth.md §1-§3), read from a request and verified.

Verification is PyJWT's: the signature is compared in constant time, ``exp`` must be in the
future, and the header's ``alg`` must be HS256 (the Node check ignores ``alg``; docs/auth.md §2).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional

import jwt
from jwt import api_jwt

from .jsontext import too_deep

ALGORITHM = "HS256"
COOKIE_NAME = "access_token"


@dataclass(frozen=True)
class Identity:
    """Who a valid token names. ``workspace_id`` is the token's claim, not yet checked."""

    user_id: str
    jti: Optional[str]
    workspace_id: Optional[str]
    expires_at: int


def token_candidates(
    cookie: Callable[[str], Optional[str]],
    authorization: Optional[str],
    query_token: Optional[str],
) -> List[str]:
    """The tokens to check, in the Node order: cookie, then Bearer, then ``?token=``.

    Every source present is listed: as in the Node middleware's strategies, a source whose
    token is invalid passes to the next (docs/auth.md §3), so the caller tries each in turn.
    """
    candidates: List[str] = []
    from_cookie = cookie(COOKIE_NAME)
    if from_cookie:
        candidates.append(from_cookie)
    if authorization:
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            candidates.append(credentials.strip())
    if query_token:
        candidates.append(query_token)
    return candidates


def verify(token: str, secret: str, is_revoked: Callable[[str], bool] = lambda jti: False) -> Optional[Identity]:
    """The identity a token proves, or None for any token that is not valid now."""
    try:
        decoded = api_jwt.decode_complete(  # top-level jwt.decode_complete only from PyJWT 2.9
            token,
            secret,
            algorithms=[ALGORITHM],
            # The shapes of sub and jti are checked below, the same on every PyJWT version
            # (2.10+ would refuse a numeric sub itself; 2.8 and 2.9 accept it).
            options={"require": ["exp", "sub"], "verify_aud": False, "verify_iat": False,
                     "verify_sub": False, "verify_jti": False},
        )
    except (jwt.PyJWTError, ValueError, TypeError, RecursionError):
        # PyJWT parses the header (before the signature is checked) and the claims with
        # json.loads, which on Python 3.11 and older cannot parse JSON nested thousands of
        # levels deep: not a token.
        return None
    claims = decoded["payload"]
    if too_deep(decoded["header"]) or too_deep(claims):
        # What 3.12+ parses, a token is still held to the bound every other input is.
        return None
    subject = claims.get("sub")
    jti = claims.get("jti")
    workspace_id = claims.get("workspaceId")
    if not isinstance(subject, (str, int)) or isinstance(subject, bool):
        return None
    if jti is not None and not isinstance(jti, str):
        return None
    if isinstance(jti, str) and is_revoked(jti):
        return None
    return Identity(
        user_id=str(subject),
        jti=jti,
        workspace_id=workspace_id if isinstance(workspace_id, str) else None,
        expires_at=int(claims["exp"]),
    )


def mint(
    secret: str,
    user: Mapping[str, Any],
    workspace_id: Optional[str] = None,
    lifetime_s: int = 7 * 24 * 3600,
    now: Optional[float] = None,
) -> str:
    """A token shaped like the Node backend's (sub, email, name, role, jti, workspaceId, iat, exp)."""
    issued = int(time.time() if now is None else now)
    payload: Dict[str, Any] = {
        "sub": user["id"],
        "email": user.get("email"),
        "name": user.get("name"),
        "role": user.get("role") or "user",
        "jti": uuid.uuid4().hex,
    }
    if workspace_id is not None:
        payload["workspaceId"] = workspace_id
    payload["iat"] = issued
    payload["exp"] = issued + lifetime_s
    return jwt.encode(payload, secret, algorithm=ALGORITHM)

"""The service's one secret: a bearer token read from a file or the environment (never the command line, where
every user of the machine can read it in the process list), checked in constant time on every request.

A request proves it knows the token by `Authorization: Bearer TOKEN`, or (browsers, which cannot set headers on a
page load or a WebSocket) by the HttpOnly, SameSite=Strict cookie that `GET /viewer?token=TOKEN` sets once.
"""

from __future__ import annotations

import hmac
import os
from pathlib import Path

from sceneloc.runtime.errors import InputError, read_text_file

TOKEN_ENV = "SCENELOC_TOKEN"
"""Environment variable holding the token when no --token-file is given (also read by the client)."""
COOKIE = "sceneloc_token"
"""The viewer's cookie."""


def read_token(token_file: Path | None) -> str:
    """The token from `token_file` (its first line, stripped) or, without one, from $SCENELOC_TOKEN. InputError
    when neither gives a non-empty token without whitespace."""
    if token_file is not None:
        lines = read_text_file(token_file, "token file").strip().splitlines()
        token, source = (lines[0].strip() if lines else ""), token_file
    else:
        token, source = os.environ.get(TOKEN_ENV, "").strip(), None
        if not token:
            raise InputError(None, f"no token: pass --token-file FILE or set {TOKEN_ENV} (clients must send it as "
                                   f"'Authorization: Bearer TOKEN')")
    if not token:
        raise InputError(source, "the token file is empty")
    if any(c.isspace() for c in token) or not token.isprintable():
        raise InputError(source, "the token holds whitespace or unprintable characters")
    return token


def bearer(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer TOKEN` header, or None."""
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    return value.strip() if scheme.lower() == "bearer" else None


def token_matches(offered: str | None, token: str) -> bool:
    """Whether `offered` is the token; the comparison takes the same time wherever the two first differ."""
    return offered is not None and hmac.compare_digest(offered.encode(), token.encode())


def authorized(headers, cookies, token: str) -> bool:
    """Whether a request (its headers and cookies, Starlette's mappings) carries the token in either form."""
    return token_matches(bearer(headers.get("authorization")), token) or token_matches(cookies.get(COOKIE), token)

"""The service's one secret: a bearer token read from a file or the environment (never the command line, where
every user of the machine can read it in the process list), checked in constant time on every request.

A request proves it knows the token by `Authorization: Bearer TOKEN`, or (browsers, which cannot set headers on a
page load or a WebSocket) by the HttpOnly, SameSite=Strict cookie that `GET /viewer?token=TOKEN` sets once.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path
from urllib.parse import urlsplit

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
    """Whether `offered` is the token. Their SHA-256 digests are compared in constant time, so the time taken says
    neither where they first differ nor how long the token is."""
    if offered is None:
        return False
    return hmac.compare_digest(hashlib.sha256(offered.encode()).digest(), hashlib.sha256(token.encode()).digest())


def authorized(headers, cookies, token: str) -> bool:
    """Whether a request (its headers and cookies, Starlette's mappings) carries the token: in the Authorization
    header, or in the viewer's cookie when the request comes from the server's own pages. A browser adds the
    cookie to requests that other sites' pages make too (same-site pages on other ports, WebSockets, which have no
    CORS), so a cookie counts only when the request's Origin, if any, is the server itself."""
    if token_matches(bearer(headers.get("authorization")), token):
        return True
    origin = headers.get("origin")
    same_origin = origin is None or urlsplit(origin).netloc == headers.get("host")
    return same_origin and token_matches(cookies.get(COOKIE), token)

"""What every request to `spotit serve` must pass before a route sees it: the token, the Host, the body size.

A plain ASGI middleware, so it also guards the static files and the OpenAPI page."""

from __future__ import annotations

import asyncio
import hmac
import logging
from http.cookies import SimpleCookie
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

from starlette.datastructures import Headers
from starlette.responses import JSONResponse, RedirectResponse

COOKIE = "spotit_token"
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}


def host_name(host_header: str) -> str:
    """'example.org:8000' -> 'example.org'; '[::1]:8000' -> '::1'."""
    if host_header.startswith("["):
        return host_header[1:].split("]", 1)[0]
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


BODY_IDLE_S = 30  # a client that sends nothing of its body for this long is answered 408 and dropped
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


class Guard:
    """Refuses a request without the token (when there is one), with a foreign Host when the server answers
    on loopback without a token (a web page elsewhere must not reach it by DNS rebinding), a change sent
    from another site's page (its Origin is not this server), or a body over `max_body` bytes (413, before
    the route reads it) or stalled for BODY_IDLE_S (408)."""

    def __init__(self, app, token: str | None, max_body: int, loopback_only: bool):
        self.app, self.token, self.max_body, self.loopback_only = app, token, max_body, loopback_only

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        refusal = self._refusal(scope, headers)
        if refusal is not None:
            return await refusal(scope, receive, send)
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        if self.token and "token" in query and scope["method"] == "GET":
            # a link with ?token=...: keep it in a cookie and take it out of the address bar and history
            rest = urlencode({k: v for k, v in query.items() if k != "token"}, doseq=True)
            response = RedirectResponse(scope["path"] + (f"?{rest}" if rest else ""), status_code=303)
            response.set_cookie(COOKIE, self.token, httponly=True, samesite="strict")
            return await response(scope, receive, send)
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            return await self._too_large(scope, receive, send)
        if scope["method"] in ("POST", "PUT", "PATCH"):
            body = bytearray()
            while True:  # counted as it arrives: a chunked body has no length to trust
                try:
                    message = await asyncio.wait_for(receive(), BODY_IDLE_S)
                except asyncio.TimeoutError:
                    response = JSONResponse({"detail": f"no data for {BODY_IDLE_S} s; request dropped"}, 408,
                                            headers={"Connection": "close"})
                    return await response(scope, receive, send)
                if message["type"] == "http.disconnect":
                    return
                body += message.get("body", b"")
                if len(body) > self.max_body:
                    return await self._too_large(scope, receive, send)
                if not message.get("more_body", False):
                    break
            receive = _replay(bytes(body), receive)
        return await self.app(scope, receive, send)

    def _refusal(self, scope, headers: Headers):
        origin = headers.get("origin")
        if scope["method"] not in SAFE_METHODS and origin and urlsplit(origin).netloc != headers.get("host"):
            # a form or fetch from another site's page: browsers send its Origin; the cookie is SameSite too
            return JSONResponse({"detail": f"a request sent from {origin} is refused: use this server's own page"}, 403)
        if self.token is None:
            if self.loopback_only and host_name(headers.get("host", "")) not in LOOPBACK_HOSTS:
                return JSONResponse({"detail": "this server answers requests addressed to localhost only"}, 403)
            return None
        if not self._authorised(scope, headers):
            return JSONResponse({"detail": "a valid token is needed: open the address with ?token=TOKEN, or send "
                                           "the header 'Authorization: Bearer TOKEN'"}, 401,
                                headers={"WWW-Authenticate": "Bearer"})
        return None

    def _authorised(self, scope, headers: Headers) -> bool:
        offered = []
        scheme, _, value = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer":
            offered.append(value.strip())
        cookie = SimpleCookie()
        try:
            cookie.load(headers.get("cookie", ""))
        except Exception:  # a malformed cookie header is no token
            pass
        if COOKIE in cookie:
            offered.append(cookie[COOKIE].value)
        offered += parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token", [])
        expected = self.token.encode()
        return any(hmac.compare_digest(token.encode(), expected) for token in offered)

    async def _too_large(self, scope, receive, send):
        megabytes = self.max_body / 2**20
        response = JSONResponse({"detail": f"the upload is larger than the limit of {megabytes:g} MiB "
                                           "(`spotit serve --max-upload-mb` changes it)"}, 413,
                                headers={"Connection": "close"})
        await response(scope, receive, send)


class RedactToken(logging.Filter):
    """Takes the query string out of access-log lines that may carry the token (`GET /?token=...`, also
    percent-encoded), which end up in files and terminals."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(_redacted(a) if isinstance(a, str) else a for a in record.args)
        return True


def _redacted(text: str) -> str:
    path, mark, query = text.partition("?")
    return f"{path}?***" if mark and "token" in unquote(query).lower() else text


def _replay(body: bytes, receive):
    """A `receive` that gives the buffered body first, then whatever the connection says next."""
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay

"""`RequestGate`: the ASGI layer every request passes before the framework sees it.

- Host check: a server on loopback answers only Host names of loopback, so a web page elsewhere
  cannot reach it through DNS rebinding.
- Bodies: a POST must have the content type its route expects (else 415) and fit that route's
  size limit (else 413, from Content-Length before reading, or while reading); the body is read
  here, in full and bounded, so no parser ever sees an oversized request.
- Headers on every response: no MIME sniffing, no framing, a same-origin content security
  policy (the page loads nothing from elsewhere), no referrer.

Errors are the API's JSON shape (errors.error_body).
"""
from __future__ import annotations

import json

from . import limits
from .errors import error_body

SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"content-security-policy", b"default-src 'self'; img-src 'self' blob: data:; style-src 'self'; "
                                 b"script-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; "
                                 b"frame-ancestors 'none'; form-action 'self'"),
]
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
# POST routes: (the content type they read, the largest body accepted)
BODY_RULES = {
    "/api/search/caption": ("application/json", limits.MAX_JSON_BYTES),
    "/api/search/features": ("application/json", limits.MAX_JSON_BYTES),
    "/api/search/item": ("application/json", limits.MAX_JSON_BYTES),
    "/api/search/image": ("multipart/form-data", limits.MAX_UPLOAD_BODY_BYTES),
}


def _header(scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


def _host_name(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("["):  # [::1]:8000
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class RequestGate:
    """allowed_hosts: Host names answered (None: any, for a server bound to a public address)."""

    def __init__(self, app, allowed_hosts=None):
        self.app = app
        self.allowed_hosts = None if allowed_hosts is None else {h.lower() for h in allowed_hosts}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": list(message.get("headers", [])) + SECURITY_HEADERS}
            await send(message)

        async def refuse(status: int, message: str):
            body = json.dumps(error_body(status, message)).encode()
            await send_with_headers({"type": "http.response.start", "status": status,
                                     "headers": [(b"content-type", b"application/json"),
                                                 (b"content-length", str(len(body)).encode())]})
            await send_with_headers({"type": "http.response.body", "body": body})

        if self.allowed_hosts is not None:
            host = _host_name(_header(scope, b"host") or "")
            if host not in self.allowed_hosts:
                return await refuse(400, f"this server answers only requests for {', '.join(sorted(self.allowed_hosts))}"
                                         f" (Host header {host[:80]!r})")
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send_with_headers)
        expected, limit = BODY_RULES.get(scope["path"], (None, limits.MAX_JSON_BYTES))
        if expected is not None:
            content_type = (_header(scope, b"content-type") or "").split(";")[0].strip().lower()
            if content_type != expected:
                shown = content_type or "none"
                how = ("upload the image as multipart/form-data with a 'file' field" if expected.startswith("multipart")
                       else "send a JSON object")
                return await refuse(415, f"{scope['path']} takes {expected}, got content type {shown[:80]!r}: {how}")
        declared = _header(scope, b"content-length")
        if declared is not None and (not declared.strip().isdigit() or int(declared) > limit):
            if not declared.strip().isdigit():
                return await refuse(400, f"invalid Content-Length {declared[:40]!r}")
            return await refuse(413, f"the request body has {int(declared):,} bytes; {scope['path']} accepts at "
                                     f"most {limit:,}")
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return await refuse(413, f"the request body is larger than the {limit:,} bytes {scope['path']} "
                                         "accepts")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body, delivered = b"".join(chunks), False

        async def replay():
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send_with_headers)

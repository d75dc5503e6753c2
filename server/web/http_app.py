"""The HTTP front: content-addressed blobs (ETag, Range) for devices, the rest to the API app."""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from starlette.types import Receive, Scope, Send

from fedge.server.blobs import BlobStore

log = logging.getLogger("fedge.server.http")
_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")


@dataclass
class TrafficCounter:
    """Bytes the HTTP side has served (the downlink of model and weights blobs)."""

    bytes_served: int = 0
    requests: int = 0


class RangeError(ValueError):
    """A Range header this server cannot satisfy (HTTP 416)."""


def _slice_for_range(header: str, size: int) -> tuple[int, int]:
    match = _RANGE_RE.match(header.strip())
    if not match or (not match.group(1) and not match.group(2)):
        raise RangeError(f"unsupported Range header {header!r}")
    start_s, end_s = match.groups()
    if start_s:
        start = int(start_s)
        end = min(int(end_s), size - 1) if end_s else size - 1
    else:  # suffix range: the last N bytes
        start, end = max(size - int(end_s), 0), size - 1
    if start >= size or start > end:
        raise RangeError(f"range {header!r} outside 0-{size - 1}")
    return start, end


class HotBlobs:
    """The most recently served blobs in memory (a round's weights go to every selected device).

    Blobs are immutable (content-addressed), so a cached copy never goes stale; a file is
    cached only after its bytes were checked against its digest.
    """

    def __init__(self, blobs: BlobStore, max_bytes: int = 64 * 1024 * 1024):
        self.blobs = blobs
        self.max_bytes = max_bytes
        self._cache: OrderedDict[str, bytes] = OrderedDict()
        self._bytes = 0

    def read(self, digest: str) -> bytes | None:
        """The blob's bytes, None if it does not exist; KeyError if `digest` is malformed."""
        data = self._cache.get(digest)
        if data is not None:
            self._cache.move_to_end(digest)
            return data
        path: Path = self.blobs.path(digest)
        if not path.exists():
            return None
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != digest:
            # served anyway (devices check the signed digest and refuse it), never cached, so
            # the genuine file is picked up once it is restored
            log.error("blob %s on disk does not match its digest", digest)
            return data
        if len(data) <= self.max_bytes // 4:
            self._cache[digest] = data
            self._bytes += len(data)
            while self._bytes > self.max_bytes:
                _, old = self._cache.popitem(last=False)
                self._bytes -= len(old)
        return data


Headers = list[tuple[bytes, bytes]]
BLOB_PREFIX = "/v1/blobs/"


def _json_error(
    status: int, detail: str, extra: Headers | None = None
) -> tuple[int, Headers, bytes]:
    body = json.dumps({"error": detail}).encode()
    return status, [(b"content-type", b"application/json"), *(extra or [])], body


class HttpFront:
    """The server's ASGI app: blob downloads answered directly, everything else by the API app.

    Every selected device fetches the round's weights; FastAPI's middleware, request objects
    and routing would cost more than serving the bytes, so ``GET``/``HEAD
    /v1/blobs/{digest}`` never reaches them. A blob's sha256 is its ETag, and Range resumes
    a download. Errors are JSON ``{"error": ...}`` like the API's.
    """

    def __init__(self, api: FastAPI, blobs: BlobStore, counter: TrafficCounter):
        self.api = api
        self.counter = counter
        self._hot = HotBlobs(blobs)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if (
            scope["type"] != "http"
            or not path.startswith(BLOB_PREFIX)
            or scope["method"] not in ("GET", "HEAD")
        ):
            await self.api(scope, receive, send)
            return
        headers = dict(scope["headers"])
        status, out, body = self.blob(
            path[len(BLOB_PREFIX) :],
            headers.get(b"range", b"").decode("latin-1") or None,
            headers.get(b"if-none-match", b"").decode("latin-1") or None,
        )
        out.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": out})
        await send({"type": "http.response.body", "body": body})

    def blob(
        self, digest: str, range_header: str | None, if_none_match: str | None
    ) -> tuple[int, Headers, bytes]:
        """Status, headers and body of a blob request (in the event loop: no thread hop)."""
        try:
            data = self._hot.read(digest)
        except KeyError:
            return _json_error(400, f"not a sha256 digest: {digest!r}")
        if data is None:
            return _json_error(404, f"no blob {digest}")
        etag = f'"{digest}"'
        headers: Headers = [
            (b"etag", etag.encode()),
            (b"accept-ranges", b"bytes"),
            (b"cache-control", b"public, max-age=31536000, immutable"),
        ]
        if if_none_match is not None:
            tags = [t.strip().removeprefix("W/") for t in if_none_match.split(",")]
            if "*" in tags or etag in tags:
                return 304, headers, b""
        self.counter.requests += 1
        headers.append((b"content-type", b"application/octet-stream"))
        if range_header is None:
            self.counter.bytes_served += len(data)
            return 200, headers, data
        try:
            start, end = _slice_for_range(range_header, len(data))
        except RangeError as exc:
            return _json_error(416, str(exc), [(b"content-range", f"bytes */{len(data)}".encode())])
        headers.append((b"content-range", f"bytes {start}-{end}/{len(data)}".encode()))
        self.counter.bytes_served += end + 1 - start
        return 206, headers, data[start : end + 1]


def create_app(blobs: BlobStore, counter: TrafficCounter) -> HttpFront:
    """The HTTP app: blobs, /healthz, and (``mount_api`` on ``.api``) the management API."""
    app = FastAPI(title="fedge server", version="1")

    @app.exception_handler(HTTPException)
    async def _json_errors(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse(
            status_code=exc.status_code,
            content={"error": exc.detail},
            headers=getattr(exc, "headers", None),
        )

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return HttpFront(app, blobs, counter)

"""The server's HTTP side: content-addressed blobs (ETag, Range) for devices, plus the API routers."""

from __future__ import annotations

import hashlib
import logging
import re
from collections import OrderedDict
from dataclasses import dataclass

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response

from server.blobs import BlobStore

log = logging.getLogger("fedge.server.http")
_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")


@dataclass
class TrafficCounter:
    """Bytes the HTTP side has served (the downlink of model and weights blobs)."""

    bytes_served: int = 0
    requests: int = 0


def _slice_for_range(header: str, size: int) -> tuple[int, int]:
    match = _RANGE_RE.match(header.strip())
    if not match or (not match.group(1) and not match.group(2)):
        raise HTTPException(status_code=416, detail=f"unsupported Range header {header!r}")
    start_s, end_s = match.groups()
    if start_s:
        start = int(start_s)
        end = min(int(end_s), size - 1) if end_s else size - 1
    else:  # suffix range: the last N bytes
        start, end = max(size - int(end_s), 0), size - 1
    if start >= size or start > end:
        raise HTTPException(status_code=416, detail=f"range {header!r} outside 0-{size - 1}")
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
        path = self.blobs.path(digest)
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


def create_app(blobs: BlobStore, counter: TrafficCounter) -> FastAPI:
    """FastAPI app serving blobs; the management API mounts its routers on it."""
    app = FastAPI(title="fedge server", version="1")
    hot = HotBlobs(blobs)

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

    async def get_blob(request: Request) -> Response:
        """A content-addressed blob; its sha256 is its ETag, and Range resumes a download.

        A plain Starlette route: every selected device fetches the round's weights, and
        FastAPI's parameter machinery would cost more than serving the bytes.
        """
        digest = request.path_params["digest"]
        range_header = request.headers.get("range")
        if_none_match = request.headers.get("if-none-match")
        try:
            data = hot.read(digest)  # in the event loop: no thread hop per request
        except KeyError as exc:
            raise HTTPException(status_code=400, detail=f"not a sha256 digest: {digest!r}") from exc
        if data is None:
            raise HTTPException(status_code=404, detail=f"no blob {digest}")
        etag = f'"{digest}"'
        headers = {
            "ETag": etag,
            "Accept-Ranges": "bytes",
            "Cache-Control": "public, max-age=31536000, immutable",
        }
        if if_none_match is not None:
            tags = [t.strip().removeprefix("W/") for t in if_none_match.split(",")]
            if "*" in tags or etag in tags:
                return Response(status_code=304, headers=headers)
        counter.requests += 1
        if range_header:
            try:
                start, end = _slice_for_range(range_header, len(data))
            except HTTPException as exc:
                exc.headers = {"Content-Range": f"bytes */{len(data)}"}
                raise
            body = data[start : end + 1]
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            counter.bytes_served += len(body)
            return Response(
                body, status_code=206, headers=headers, media_type="application/octet-stream"
            )
        counter.bytes_served += len(data)
        return Response(data, headers=headers, media_type="application/octet-stream")

    app.add_route("/v1/blobs/{digest}", get_blob, methods=["GET"], include_in_schema=False)
    return app

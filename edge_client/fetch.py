"""Downloads signed, content-addressed blobs over HTTP(S) into a local cache (resumable)."""

from __future__ import annotations

import asyncio
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import h11
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedge.edge_client.errors import ArtifactError
from fedge.edge_client.protocol.messages import BlobRef
from fedge.edge_client.signing import verify_blob


@dataclass
class _Connection:
    """An open HTTP/1.1 connection to one origin (scheme, host, port)."""

    origin: tuple[str, str, int]
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    http: h11.Connection


class BlobFetcher:
    """Fetches blobs once, checks digest and server signature, and keeps them in a cache dir."""

    def __init__(
        self,
        cache_dir: Path,
        server_key: Ed25519PublicKey,
        max_bytes: int = 256 << 20,
        ssl_context: ssl.SSLContext | None = None,
        timeout_s: float = 60.0,
    ):
        self.cache_dir = Path(cache_dir)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.server_key = server_key
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self._ssl = ssl_context
        self.bytes_downloaded = 0
        self._kept: _Connection | None = None

    def cached_digests(self) -> list[str]:
        return sorted(p.name for p in self.cache_dir.iterdir() if len(p.name) == 64)[:64]

    def holds(self, ref: BlobRef) -> bool:
        """Whether the blob is in the cache (it was verified when it was stored)."""
        return len(ref.sha256) == 64 and (self.cache_dir / ref.sha256).exists()

    def cached(self, digest: str) -> bytes | None:
        """A blob already in the cache (it was verified when it was stored), or None."""
        path = self.cache_dir / digest
        if len(digest) != 64 or not path.exists():
            return None
        return path.read_bytes()

    def store_verified(self, ref: BlobRef, kind: str, data: bytes) -> bool:
        """Cache ``data`` built locally if it matches the signed ``ref``; False if it does not."""
        try:
            verify_blob(self.server_key, kind, data, ref.sha256, ref.signature)
        except ArtifactError:
            return False
        self._store(ref.sha256, data)
        return True

    def _store(self, digest: str, data: bytes) -> None:
        """Put verified bytes into the cache atomically (never a half-written entry)."""
        tmp = (self.cache_dir / digest).with_suffix(".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, self.cache_dir / digest)

    async def fetch(self, ref: BlobRef, kind: str) -> bytes:
        """Return the verified blob, from the cache when present.

        The download runs in the event loop (asyncio streams, HTTP/1.1 by h11): a process of
        many simulated devices pays no thread hop per blob, and a device keeps its MQTT
        session served while a large model downloads.
        """
        if ref.size > self.max_bytes:
            raise ArtifactError(
                f"{kind} of {ref.size} bytes exceeds the device limit {self.max_bytes}"
            )
        target = self.cache_dir / ref.sha256
        if target.exists():
            data = target.read_bytes()
            try:
                verify_blob(self.server_key, kind, data, ref.sha256, ref.signature)
                return data
            except ArtifactError:
                target.unlink()  # corrupt cache entry: fetch again
        data = await self._download(ref)
        verify_blob(self.server_key, kind, data, ref.sha256, ref.signature)
        self._store(ref.sha256, data)
        return data

    def fetch_sync(self, ref: BlobRef, kind: str) -> bytes:
        """`fetch` for callers without an event loop (tools, tests)."""

        async def once() -> bytes:
            try:
                return await self.fetch(ref, kind)
            finally:
                self.release()

        return asyncio.run(once())

    async def _download(self, ref: BlobRef) -> bytes:
        part = self.cache_dir / f"{ref.sha256}.part"
        have = part.read_bytes() if part.exists() else b""
        status, body = await self._get(ref.url, {"Range": f"bytes={len(have)}-"} if have else {})
        if status == 416:  # our partial file is stale
            part.unlink(missing_ok=True)
            return await self._download(ref)
        if status not in (200, 206):
            raise ArtifactError(f"download of {ref.url} failed: HTTP {status}")
        self.bytes_downloaded += len(body)
        data = have + body if status == 206 else body
        if len(data) > self.max_bytes:
            raise ArtifactError(f"{ref.url} is larger than the device limit")
        part.write_bytes(data)
        if len(data) < ref.size:
            raise ArtifactError(f"download of {ref.url} incomplete ({len(data)}/{ref.size} bytes)")
        part.unlink(missing_ok=True)
        return data

    def release(self) -> None:
        """Close the connection kept open between the downloads of a task."""
        if self._kept is not None:
            self._kept.writer.close()
            self._kept = None

    async def _get(self, url: str, headers: dict[str, str]) -> tuple[int, bytes]:
        """One GET: (status, body of at most ``max_bytes`` + 1 bytes).

        Reuses the connection of the previous download from the same origin (a task fetches
        model, manifest and weights back to back); a kept connection the server has closed
        meanwhile costs one more try on a new one.
        """
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ArtifactError(f"cannot download {url!r}: not an http(s) URL")
        https = parts.scheme == "https"
        origin = (parts.scheme, parts.hostname, parts.port or (443 if https else 80))
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        request = h11.Request(
            method="GET", target=target, headers=[("Host", parts.netloc), *headers.items()]
        )
        kept, self._kept = self._kept, None
        try:
            async with asyncio.timeout(self.timeout_s):
                if kept is not None and kept.origin == origin:
                    try:
                        return await self._exchange(kept, request)
                    except (OSError, h11.ProtocolError):
                        pass  # closed by the server while it was kept: a new connection
                elif kept is not None:
                    kept.writer.close()
                context = (self._ssl or ssl.create_default_context()) if https else None
                reader, writer = await asyncio.open_connection(origin[1], origin[2], ssl=context)
                fresh = _Connection(origin, reader, writer, h11.Connection(h11.CLIENT))
                return await self._exchange(fresh, request)
        except (OSError, TimeoutError, h11.ProtocolError) as exc:
            raise ArtifactError(f"download of {url} failed: {exc or type(exc).__name__}") from exc

    async def _exchange(self, conn: _Connection, request: h11.Request) -> tuple[int, bytes]:
        """Send ``request`` on ``conn``, read the response; keep ``conn`` if it can serve more."""
        try:
            conn.writer.write(conn.http.send(request) + conn.http.send(h11.EndOfMessage()))
            status, body = await self._response(conn.http, conn.reader)
        except BaseException:
            conn.writer.close()
            raise
        if conn.http.our_state is h11.DONE and conn.http.their_state is h11.DONE:
            conn.http.start_next_cycle()
            self._kept = conn
        else:
            conn.writer.close()
        return status, body

    async def _response(
        self, conn: h11.Connection, reader: asyncio.StreamReader
    ) -> tuple[int, bytes]:
        status, body = 0, bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await reader.read(1 << 16))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > self.max_bytes:
                    return status, bytes(body)
            elif isinstance(event, h11.ConnectionClosed) and status == 0:
                raise h11.RemoteProtocolError("connection closed before a response")
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                return status, bytes(body)

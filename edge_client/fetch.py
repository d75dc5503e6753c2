"""Downloads signed, content-addressed blobs over HTTP into a local cache (resumable)."""

from __future__ import annotations

import asyncio
import os
import ssl
import urllib.error
import urllib.request
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge_client.errors import ArtifactError
from edge_client.protocol.messages import BlobRef
from edge_client.signing import verify_blob


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

    def cached_digests(self) -> list[str]:
        return sorted(p.name for p in self.cache_dir.iterdir() if len(p.name) == 64)[:64]

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
        tmp = (self.cache_dir / ref.sha256).with_suffix(".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, self.cache_dir / ref.sha256)
        return True

    async def fetch(self, ref: BlobRef, kind: str) -> bytes:
        """Return the verified blob, from the cache when present."""
        return await asyncio.to_thread(self.fetch_sync, ref, kind)

    def fetch_sync(self, ref: BlobRef, kind: str) -> bytes:
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
        data = self._download(ref)
        verify_blob(self.server_key, kind, data, ref.sha256, ref.signature)
        tmp = target.with_suffix(".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, target)
        return data

    def _download(self, ref: BlobRef) -> bytes:
        part = self.cache_dir / f"{ref.sha256}.part"
        have = part.read_bytes() if part.exists() else b""
        request = urllib.request.Request(ref.url)
        if have:
            request.add_header("Range", f"bytes={len(have)}-")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s, context=self._ssl) as resp:
                body = resp.read(self.max_bytes + 1)
                status = resp.status
        except urllib.error.HTTPError as exc:
            if exc.code == 416:  # our partial file is stale
                part.unlink(missing_ok=True)
                return self._download(ref)
            raise ArtifactError(f"download of {ref.url} failed: HTTP {exc.code}") from exc
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            raise ArtifactError(f"download of {ref.url} failed: {exc}") from exc
        self.bytes_downloaded += len(body)
        data = have + body if status == 206 else body
        if len(data) > self.max_bytes:
            raise ArtifactError(f"{ref.url} is larger than the device limit")
        part.write_bytes(data)
        if len(data) < ref.size:
            raise ArtifactError(f"download of {ref.url} incomplete ({len(data)}/{ref.size} bytes)")
        part.unlink(missing_ok=True)
        return data

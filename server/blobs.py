"""Content-addressed blob directory (artifacts, weights, optimizer state), written atomically."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from fedge.edge_client.protocol.messages import BlobRef
from fedge.edge_client.signing import sha256_hex, sign_blob


class BlobStore:
    """Files named by their sha256 under ``root/ab/abcdef...``."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise KeyError(f"not a sha256 digest: {digest!r}")
        return self.root / digest[:2] / digest

    def put(self, data: bytes) -> str:
        """Store ``data`` durably (fsync + rename) and return its digest."""
        digest = sha256_hex(data)
        target = self.path(digest)
        if target.exists():
            return digest
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        return digest

    def get(self, digest: str) -> bytes:
        return self.path(digest).read_bytes()

    def has(self, digest: str) -> bool:
        try:
            return self.path(digest).exists()
        except KeyError:
            return False


class SignedBlobs:
    """Puts blobs in the store and hands out signed references devices can download.

    A reference carries the blob's digest, its URL under ``public_url`` and the server's
    Ed25519 signature over (kind, digest), which devices check before using the bytes.
    """

    def __init__(self, blobs: BlobStore, signing_key: Any, public_url: str):
        self.blobs = blobs
        self.signing_key = signing_key
        self.public_url = public_url.rstrip("/")

    def ref(self, kind: str, data: bytes) -> BlobRef:
        """Store ``data`` and return its signed reference as a blob of ``kind``."""
        digest = self.blobs.put(data)
        return BlobRef(
            sha256=digest,
            url=f"{self.public_url}/v1/blobs/{digest}",
            signature=sign_blob(self.signing_key, kind, digest),
            size=len(data),
        )

"""The blob endpoint over real HTTP (ETag, 304, Range), signatures, and the device's fetcher."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvicorn
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from fedge_testing import LoopThread, free_tcp_port

from fedge.edge_client.errors import ArtifactError
from fedge.edge_client.fetch import BlobFetcher
from fedge.edge_client.protocol.messages import BlobRef
from fedge.edge_client.signing import (
    load_or_create_signing_key,
    load_public_key,
    public_pem,
    sha256_hex,
    sign_blob,
    verify_blob,
)
from fedge.server.blobs import BlobStore
from fedge.server.web.http_app import TrafficCounter, create_app

KEEP_ALIVE_S = 1  # the test server closes idle connections after this
DATA = random.Random(0).randbytes(200_000)
DIGEST = sha256_hex(DATA)
SIZE = len(DATA)


@dataclass
class BlobServer:
    """A real uvicorn server on a free loopback port serving one BlobStore."""

    port: int
    blobs: BlobStore
    counter: TrafficCounter
    key: Ed25519PrivateKey

    def get(
        self, path: str, method: str = "GET", **headers: str
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request(method, path, headers=headers)
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def ref(self, data: bytes, kind: str = "model") -> BlobRef:
        digest = self.blobs.put(data)
        return BlobRef(
            sha256=digest,
            url=f"http://127.0.0.1:{self.port}/v1/blobs/{digest}",
            signature=sign_blob(self.key, kind, digest),
            size=len(data),
        )


@pytest.fixture(scope="module")
def blob_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BlobServer]:
    root = tmp_path_factory.mktemp("blobs")
    blobs, counter = BlobStore(root / "store"), TrafficCounter()
    assert blobs.put(DATA) == DIGEST
    port = free_tcp_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(blobs, counter),
            host="127.0.0.1",
            port=port,
            log_level="warning",
            lifespan="off",
            timeout_keep_alive=KEEP_ALIVE_S,
        )
    )
    loop = LoopThread("http")
    future = loop.submit(server.serve())
    for _ in range(200):
        if server.started or future.done():
            break
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    try:
        yield BlobServer(port, blobs, counter, load_or_create_signing_key(root / "signing.key"))
    finally:
        server.should_exit = True
        future.result(timeout=10)
        loop.close()


BLOB = f"/v1/blobs/{DIGEST}"

# --- the endpoint -------------------------------------------------------------------------


def test_full_download_with_etag_and_cache_headers(blob_server: BlobServer) -> None:
    status, headers, body = blob_server.get(BLOB)
    assert status == 200 and body == DATA
    assert headers["etag"] == f'"{DIGEST}"'
    assert headers["accept-ranges"] == "bytes"
    assert "immutable" in headers["cache-control"]
    assert headers["content-length"] == str(SIZE)


@pytest.mark.parametrize(
    "if_none_match",
    [
        f'"{DIGEST}"',
        f'"{"0" * 64}", "{DIGEST}"',
        "*",
        f'W/"{DIGEST}"',
    ],
    ids=["exact", "in-a-list", "star", "weak"],
)
def test_if_none_match_gives_304_without_a_body(
    blob_server: BlobServer, if_none_match: str
) -> None:
    before = blob_server.counter.bytes_served
    status, headers, body = blob_server.get(BLOB, **{"If-None-Match": if_none_match})
    assert status == 304 and body == b""
    assert headers["etag"] == f'"{DIGEST}"'
    assert blob_server.counter.bytes_served == before


def test_other_etag_gives_the_blob(blob_server: BlobServer) -> None:
    status, _, body = blob_server.get(BLOB, **{"If-None-Match": f'"{"0" * 64}"'})
    assert status == 200 and body == DATA


@pytest.mark.parametrize(
    "header, start, end",
    [
        ("bytes=0-9", 0, 9),
        ("bytes=0-0", 0, 0),
        ("bytes=1000-", 1000, SIZE - 1),
        (f"bytes={SIZE - 1}-", SIZE - 1, SIZE - 1),
        ("bytes=5-999999999", 5, SIZE - 1),
        ("bytes=-7", SIZE - 7, SIZE - 1),
        (f"bytes=-{SIZE * 2}", 0, SIZE - 1),
        (" bytes=10-19 ", 10, 19),
    ],
)
def test_range_requests_give_206_with_content_range(
    blob_server: BlobServer, header: str, start: int, end: int
) -> None:
    before = blob_server.counter.bytes_served
    status, headers, body = blob_server.get(BLOB, Range=header)
    assert status == 206
    assert headers["content-range"] == f"bytes {start}-{end}/{SIZE}"
    assert body == DATA[start : end + 1] and headers["content-length"] == str(end - start + 1)
    assert blob_server.counter.bytes_served - before == end - start + 1


@pytest.mark.parametrize(
    "header",
    [
        f"bytes={SIZE}-",
        f"bytes={SIZE + 10}-{SIZE + 20}",
        "bytes=9-5",
        "bytes=-0",
        "bytes=-",
        "bytes=abc",
        "bytes=0-1,4-5",
        "items=0-5",
    ],
)
def test_unsatisfiable_or_malformed_ranges_give_416(blob_server: BlobServer, header: str) -> None:
    before = blob_server.counter.bytes_served
    status, headers, body = blob_server.get(BLOB, Range=header)
    assert status == 416
    assert headers["content-type"] == "application/json" and "error" in json.loads(body)
    assert blob_server.counter.bytes_served == before


@pytest.mark.parametrize(
    "path, status",
    [
        (f"/v1/blobs/{'0' * 64}", 404),
        ("/v1/blobs/xyz", 400),
        (f"/v1/blobs/{DIGEST.upper()}", 400),
        (f"/v1/blobs/{DIGEST[:-1]}", 400),
        (f"/v1/blobs/{DIGEST}0", 400),
    ],
)
def test_missing_or_malformed_digest_gives_a_json_error(
    blob_server: BlobServer, path: str, status: int
) -> None:
    before = blob_server.counter.bytes_served
    got, headers, body = blob_server.get(path)
    assert got == status
    assert headers["content-type"] == "application/json"
    assert isinstance(json.loads(body)["error"], str)
    assert blob_server.counter.bytes_served == before


def test_byte_counter_counts_what_was_served(blob_server: BlobServer) -> None:
    bytes_before, requests_before = blob_server.counter.bytes_served, blob_server.counter.requests
    blob_server.get(BLOB)
    blob_server.get(BLOB, Range="bytes=0-99")
    blob_server.get(BLOB, **{"If-None-Match": f'"{DIGEST}"'})
    assert blob_server.counter.bytes_served - bytes_before == SIZE + 100
    assert blob_server.counter.requests - requests_before == 2


def test_head_gives_the_headers_without_the_body(blob_server: BlobServer) -> None:
    status, headers, body = blob_server.get(BLOB, method="HEAD")
    assert status == 200 and body == b""
    assert headers["content-length"] == str(SIZE) and headers["etag"] == f'"{DIGEST}"'


def test_other_methods_do_not_reach_the_blobs(blob_server: BlobServer) -> None:
    before = blob_server.counter.bytes_served
    status, headers, body = blob_server.get(BLOB, method="POST")
    assert status in (404, 405) and headers["content-type"] == "application/json"
    assert blob_server.counter.bytes_served == before


def test_healthz(blob_server: BlobServer) -> None:
    assert blob_server.get("/healthz")[:1] == (200,)


# --- signatures ---------------------------------------------------------------------------


def test_signatures_bind_digest_and_kind(tmp_path: Path) -> None:
    key = load_or_create_signing_key(tmp_path / "k" / "signing.key")
    public = key.public_key()
    sig = sign_blob(key, "model", DIGEST)
    verify_blob(public, "model", DATA, DIGEST, sig)
    with pytest.raises(ArtifactError, match="does not match"):
        verify_blob(public, "model", DATA + b"x", DIGEST, sig)
    with pytest.raises(ArtifactError, match="bad signature"):
        verify_blob(public, "weights", DATA, DIGEST, sig)  # a model signature is not a weights one
    with pytest.raises(ArtifactError, match="bad signature"):
        verify_blob(Ed25519PrivateKey.generate().public_key(), "model", DATA, DIGEST, sig)


def test_a_remembered_verification_still_refuses_what_it_did_not_verify(tmp_path: Path) -> None:
    """verify_blob remembers good signatures per process; the memory must not widen them."""
    key = load_or_create_signing_key(tmp_path / "k" / "signing.key")
    public, sig = key.public_key(), sign_blob(key, "model", DIGEST)
    for _ in range(3):  # the first call verifies, the next ones are remembered
        verify_blob(public, "model", DATA, DIGEST, sig)
        with pytest.raises(ArtifactError, match="does not match"):
            verify_blob(public, "model", DATA[:-1], DIGEST, sig)  # the bytes are hashed every time
        with pytest.raises(ArtifactError, match="bad signature"):
            verify_blob(public, "model", DATA, DIGEST, bytes([sig[0] ^ 1]) + sig[1:])
        with pytest.raises(ArtifactError, match="bad signature"):
            verify_blob(Ed25519PrivateKey.generate().public_key(), "model", DATA, DIGEST, sig)


def test_signing_key_is_created_once_private_and_reloaded(tmp_path: Path) -> None:
    path = tmp_path / "k" / "signing.key"
    key = load_or_create_signing_key(path)
    assert path.stat().st_mode & 0o777 == 0o600
    again = load_or_create_signing_key(path)
    assert public_pem(again.public_key()) == public_pem(key.public_key())
    assert public_pem(load_public_key(path.with_suffix(".pub").read_bytes())) == public_pem(
        key.public_key()
    )


def test_keys_of_another_type_are_refused(tmp_path: Path) -> None:
    other = X25519PrivateKey.generate()
    path = tmp_path / "x25519.key"
    path.write_bytes(
        other.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(ArtifactError, match="not an Ed25519 private key"):
        load_or_create_signing_key(path)
    pem = other.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(ArtifactError, match="not an Ed25519 public key"):
        load_public_key(pem)


# --- the device's fetcher against the real endpoint ---------------------------------------


def fetcher(blob_server: BlobServer, cache: Path, **kwargs: int) -> BlobFetcher:
    return BlobFetcher(cache, blob_server.key.public_key(), **kwargs)  # type: ignore[arg-type]


def test_fetch_verifies_and_caches(blob_server: BlobServer, tmp_path: Path) -> None:
    ref = blob_server.ref(DATA)
    f = fetcher(blob_server, tmp_path / "cache")
    requests = blob_server.counter.requests
    assert f.fetch_sync(ref, "model") == DATA
    assert f.bytes_downloaded == SIZE and f.cached_digests() == [DIGEST]
    assert asyncio.run(f.fetch(ref, "model")) == DATA  # from the cache
    assert blob_server.counter.requests == requests + 1
    # a corrupted cache entry is detected and fetched again
    (tmp_path / "cache" / DIGEST).write_bytes(b"rot" + DATA[3:])
    assert f.fetch_sync(ref, "model") == DATA
    assert blob_server.counter.requests == requests + 2


def test_fetch_resumes_a_partial_download_with_range(
    blob_server: BlobServer, tmp_path: Path
) -> None:
    ref = blob_server.ref(DATA)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / f"{DIGEST}.part").write_bytes(DATA[:150_000])
    f = fetcher(blob_server, cache)
    before = blob_server.counter.bytes_served
    assert f.fetch_sync(ref, "model") == DATA
    assert blob_server.counter.bytes_served - before == SIZE - 150_000
    assert f.bytes_downloaded == SIZE - 150_000
    assert not (cache / f"{DIGEST}.part").exists()


def test_fetch_restarts_when_the_partial_file_is_stale(
    blob_server: BlobServer, tmp_path: Path
) -> None:
    ref = blob_server.ref(DATA)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / f"{DIGEST}.part").write_bytes(os.urandom(SIZE + 5))  # longer than the blob: 416
    assert fetcher(blob_server, cache).fetch_sync(ref, "model") == DATA


def test_fetch_refuses_a_corrupt_partial_then_recovers(
    blob_server: BlobServer, tmp_path: Path
) -> None:
    ref = blob_server.ref(DATA)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / f"{DIGEST}.part").write_bytes(b"\0" * 1000)
    f = fetcher(blob_server, cache)
    with pytest.raises(ArtifactError, match="does not match"):
        f.fetch_sync(ref, "model")
    assert f.cached_digests() == []
    assert f.fetch_sync(ref, "model") == DATA


def test_fetch_refusals(blob_server: BlobServer, tmp_path: Path) -> None:
    ref = blob_server.ref(DATA, kind="model")
    f = fetcher(blob_server, tmp_path / "cache")
    with pytest.raises(ArtifactError, match="bad signature"):
        f.fetch_sync(ref, "weights")
    assert f.cached_digests() == []
    with pytest.raises(ArtifactError, match="exceeds the device limit"):
        fetcher(blob_server, tmp_path / "small", max_bytes=1000).fetch_sync(ref, "model")
    missing = BlobRef(
        sha256="0" * 64,
        url=f"http://127.0.0.1:{blob_server.port}/v1/blobs/" + "0" * 64,
        signature=ref.signature,
        size=10,
    )
    with pytest.raises(ArtifactError, match="HTTP 404"):
        f.fetch_sync(missing, "model")
    closed = BlobRef(
        sha256=ref.sha256,
        url=f"http://127.0.0.1:{free_tcp_port()}/v1/blobs/x",
        signature=ref.signature,
        size=ref.size,
    )
    with pytest.raises(ArtifactError, match="failed"):
        f.fetch_sync(closed, "model")


def test_downloads_of_a_task_share_one_connection(blob_server: BlobServer, tmp_path: Path) -> None:
    f = fetcher(blob_server, tmp_path / "cache")
    first, second = blob_server.ref(b"manifest " * 100), blob_server.ref(b"weights " * 100)

    async def task() -> None:
        assert await f.fetch(first, "model") == b"manifest " * 100
        kept = f._kept
        assert kept is not None  # the server keeps the connection open for the next download
        assert await f.fetch(second, "model") == b"weights " * 100
        assert f._kept is kept  # ... and the next download used it
        await asyncio.sleep(KEEP_ALIVE_S + 1.0)  # the server closes it meanwhile
        (tmp_path / "cache" / second.sha256).unlink()
        assert await f.fetch(second, "model") == b"weights " * 100  # on a new connection
        assert f._kept is not None and f._kept is not kept
        f.release()
        assert f._kept is None

    asyncio.run(task())

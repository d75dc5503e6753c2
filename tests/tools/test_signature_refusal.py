"""A device loads only blobs its server signed, fetched over HTTPS with the fleet's certificate."""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import uvicorn
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedge.edge_client.artifact import MANIFEST_FILE, MODEL_FILE, Artifact
from fedge.edge_client.errors import ArtifactError
from fedge.edge_client.fetch import BlobFetcher
from fedge.edge_client.protocol.messages import BlobRef
from fedge.edge_client.signing import load_or_create_signing_key, load_public_key, sign_blob
from fedge.edge_client.weights import pack_weights, unpack_weights
from fedge.server.blobs import BlobStore
from fedge.server.web.http_app import TrafficCounter, create_app
from fedge.tools.provision import ProvisionResult, pki, provision_fleet

DEVICE = "pi-7"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> ProvisionResult:
    return provision_fleet(tmp_path_factory.mktemp("fleet"), "sig", [DEVICE])


@dataclass
class BlobServer:
    """The server's FastAPI blob app under uvicorn, HTTPS with the provisioned certificate."""

    port: int
    blobs: BlobStore
    counter: TrafficCounter
    signing_key: Ed25519PrivateKey

    def ref(self, data: bytes, kind: str, key: Ed25519PrivateKey | None = None) -> BlobRef:
        digest = self.blobs.put(data)
        signature = sign_blob(key or self.signing_key, kind, digest)
        return BlobRef(sha256=digest, url=f"https://127.0.0.1:{self.port}/v1/blobs/{digest}",
                       signature=signature, size=len(data))


@pytest.fixture(scope="module")
def server(fleet: ProvisionResult, tmp_path_factory: pytest.TempPathFactory,
           free_port: Callable[[], int]) -> Iterator[BlobServer]:
    folder = fleet.server_config.parent
    blobs, counter = BlobStore(tmp_path_factory.mktemp("blobs")), TrafficCounter()
    port = free_port()
    config = uvicorn.Config(create_app(blobs, counter), host="127.0.0.1", port=port,
                            log_level="warning", lifespan="off",
                            ssl_certfile=str(folder / "http.crt"),
                            ssl_keyfile=str(folder / "http.key"))
    http = uvicorn.Server(config)
    thread = threading.Thread(target=http.run, name="https-blobs", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not http.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert http.started, "uvicorn did not start"
    try:
        yield BlobServer(port, blobs, counter, load_or_create_signing_key(folder / "signing.key"))
    finally:
        http.should_exit = True
        thread.join(timeout=10)


def device_fetcher(fleet: ProvisionResult, cache: Path, ca_file: Path | None = None) -> BlobFetcher:
    """The fetcher as the agent builds it: the provisioned server key, the fleet CA for TLS."""
    folder = fleet.devices[DEVICE]
    key = load_public_key((folder / "server_signing.pub").read_bytes())
    context = ssl.create_default_context(cafile=str(ca_file or folder / "ca.crt"))
    return BlobFetcher(cache, key, ssl_context=context, timeout_s=10)


def test_artifact_signed_by_the_server_is_accepted_cached_and_loads(
        fleet: ProvisionResult, server: BlobServer, mlp_artifact: Path, tmp_path: Path) -> None:
    model = server.ref((mlp_artifact / MODEL_FILE).read_bytes(), "model")
    manifest = server.ref((mlp_artifact / MANIFEST_FILE).read_bytes(), "manifest")
    fetcher = device_fetcher(fleet, tmp_path / "cache")
    artifact = Artifact.from_bytes(fetcher.fetch_sync(manifest, "manifest"),
                                   fetcher.fetch_sync(model, "model"))
    assert artifact.manifest.sha256 == model.sha256
    assert fetcher.cached_digests() == sorted([model.sha256, manifest.sha256])
    requests = server.counter.requests
    assert fetcher.fetch_sync(model, "model") == (mlp_artifact / MODEL_FILE).read_bytes()
    assert server.counter.requests == requests  # served from the cache, no download


@pytest.mark.parametrize("signer", ["stranger", "enrolment-key"])
def test_artifact_signed_by_another_key_is_refused(
        fleet: ProvisionResult, server: BlobServer, mlp_artifact: Path, tmp_path: Path,
        signer: str) -> None:
    other = (Ed25519PrivateKey.generate() if signer == "stranger" else
             load_or_create_signing_key(fleet.server_config.parent / "enrolment.key"))
    model = server.ref((mlp_artifact / MODEL_FILE).read_bytes(), "model", key=other)
    fetcher = device_fetcher(fleet, tmp_path / "cache")
    with pytest.raises(ArtifactError, match="bad signature"):
        fetcher.fetch_sync(model, "model")
    assert list((tmp_path / "cache").iterdir()) == []  # nothing refused is kept


def test_blob_whose_bytes_do_not_match_the_signed_digest_is_refused(
        fleet: ProvisionResult, server: BlobServer, mlp_artifact: Path, tmp_path: Path) -> None:
    # bytes no earlier test fetched: the server keeps recently served blobs in memory
    data = (mlp_artifact / MODEL_FILE).read_bytes() + b"tamper-test"
    model = server.ref(data, "model")
    stored = server.blobs.path(model.sha256)
    tampered = bytearray(data)
    tampered[len(data) // 2] ^= 0x01
    stored.write_bytes(bytes(tampered))  # the server's copy is altered after signing
    fetcher = device_fetcher(fleet, tmp_path / "cache")
    try:
        with pytest.raises(ArtifactError, match="does not match"):
            fetcher.fetch_sync(model, "model")
        assert list((tmp_path / "cache").iterdir()) == []
    finally:
        stored.write_bytes(data)
    assert fetcher.fetch_sync(model, "model") == data  # the genuine bytes are accepted again


def test_weights_are_bound_to_their_kind(fleet: ProvisionResult, server: BlobServer,
                                         tmp_path: Path) -> None:
    shapes = [(64, 16), (16,), (16, 10), (10,)]
    rng = np.random.default_rng(0)
    weights = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    blob = pack_weights(weights)
    fetcher = device_fetcher(fleet, tmp_path / "cache")
    as_model = server.ref(blob, "model")  # a valid server signature, but for a model
    with pytest.raises(ArtifactError, match="bad signature"):
        fetcher.fetch_sync(as_model, "weights")
    good = server.ref(blob, "weights")
    loaded = unpack_weights(fetcher.fetch_sync(good, "weights"), shapes)
    assert all(np.array_equal(a, b) for a, b in zip(loaded, weights, strict=True))


def test_https_server_with_a_certificate_from_another_ca_is_refused(
        fleet: ProvisionResult, server: BlobServer, tmp_path: Path) -> None:
    other_ca = tmp_path / "other-ca.crt"
    other_ca.write_bytes(pki.cert_pem(pki.new_ca("elsewhere").cert))
    ref = server.ref(b"weights that never arrive", "weights")
    fetcher = device_fetcher(fleet, tmp_path / "cache", ca_file=other_ca)
    with pytest.raises(ArtifactError, match="CERTIFICATE_VERIFY_FAILED"):
        fetcher.fetch_sync(ref, "weights")
    assert fetcher.bytes_downloaded == 0

"""The mask PRG and the share encryption primitives."""

from __future__ import annotations

import os

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from fedge.edge_client.errors import SecAggError
from fedge.edge_client.secagg import keys, prg


def reference_mask(key: bytes, d: int) -> np.ndarray:
    stream = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor().update(bytes(4 * d))
    return np.frombuffer(stream, dtype="<u4").astype(np.uint32)


@pytest.mark.parametrize("d", [1, 5, prg.CHUNK_WORDS, 2 * prg.CHUNK_WORDS + 3])
def test_apply_masks_matches_one_aes_ctr_stream(d: int) -> None:
    k1, k2 = os.urandom(32), os.urandom(32)
    target = np.arange(d, dtype=np.uint32)
    prg.apply_masks(target, [(k1, 1), (k2, -1)])
    expected = np.arange(d, dtype=np.uint32) + reference_mask(k1, d) - reference_mask(k2, d)
    np.testing.assert_array_equal(target, expected)


def test_masks_cancel_across_groups() -> None:
    masks = [(os.urandom(32), 1) for _ in range(prg.GROUP + 3)]
    target = np.full(9, 7, dtype=np.uint32)
    prg.apply_masks(target, masks)
    assert not np.all(target == 7)
    prg.apply_masks(target, [(key, -1) for key, _ in masks])
    np.testing.assert_array_equal(target, np.full(9, 7, dtype=np.uint32))


def test_apply_masks_validates() -> None:
    with pytest.raises(SecAggError, match="uint32"):
        prg.apply_masks(np.zeros(4, dtype=np.int64), [])
    with pytest.raises(SecAggError, match="uint32"):
        prg.apply_masks(np.zeros(8, dtype=np.uint32)[::2], [])
    with pytest.raises(SecAggError, match="signs"):
        prg.apply_masks(np.zeros(4, dtype=np.uint32), [(bytes(32), 2)])
    with pytest.raises(SecAggError, match="32 bytes"):
        prg.apply_masks(np.zeros(4, dtype=np.uint32), [(bytes(16), 1)])


def test_pairwise_keys_agree_and_signs_cancel() -> None:
    a, b = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    sa = keys.agree(a, keys.x25519_public_bytes(b))
    sb = keys.agree(b, keys.x25519_public_bytes(a))
    assert keys.pair_mask_key(sa, "r", "u", "v") == keys.pair_mask_key(sb, "r", "v", "u")
    assert keys.pair_mask_key(sa, "r", "u", "v") != keys.pair_mask_key(sa, "r2", "u", "v")
    assert keys.pair_mask_sign("u", "v") == -keys.pair_mask_sign("v", "u")
    with pytest.raises(SecAggError, match="small-order"):
        keys.agree(a, bytes(32))


def test_share_encryption_binds_round_sender_and_recipient() -> None:
    key = os.urandom(32)
    b_share, s_share = os.urandom(66), os.urandom(66)
    blob = keys.encrypt_shares(key, "r1", "u", "v", b_share, s_share)
    assert len(blob) == keys.SHARE_CIPHERTEXT_BYTES
    assert keys.decrypt_shares(key, "r1", "u", "v", blob) == (b_share, s_share)
    for round_id, sender, recipient in [("r2", "u", "v"), ("r1", "w", "v"), ("r1", "u", "w")]:
        with pytest.raises(SecAggError, match="failed authentication"):
            keys.decrypt_shares(key, round_id, sender, recipient, blob)
    with pytest.raises(SecAggError, match="wrong length"):
        keys.decrypt_shares(key, "r1", "u", "v", blob[:-1])
    assert keys.share_key(key, "r1", "u", "v") != keys.share_key(key, "r1", "v", "u")

"""Unmask stage of the server: rebuild secrets from shares and list the masks to remove."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from fedge.edge_client.errors import SecAggError
from fedge.edge_client.secagg.keys import (
    agree,
    pair_mask_key,
    pair_mask_sign,
    seed_commitment,
    self_mask_key,
    x25519_public_bytes,
)
from fedge.edge_client.secagg.messages import AdvertiseKeys
from fedge.edge_client.secagg.shamir import Share, reconstruct_secret


@dataclass(frozen=True)
class UnmaskInputs:
    """Everything the server knows when the Unmask stage closes."""

    round_id: str
    t: int
    index: Mapping[str, int]  # device -> Shamir x-coordinate
    neighbours: Mapping[str, frozenset[str]]
    advertisements: Mapping[str, AdvertiseKeys]
    survivors: frozenset[str]  # U3: their masked inputs are in the sum
    dropped: frozenset[str]  # U2 \ U3: shared keys, sent no masked input
    seed_shares: Mapping[str, Mapping[str, int]]  # responder -> survivor -> share value
    key_shares: Mapping[str, Mapping[str, int]]  # responder -> dropped -> share value


def _rebuild(
    owner: str, inputs: UnmaskInputs, table: Mapping[str, Mapping[str, int]], kind: str
) -> bytes:
    holders = sorted(
        (v for v in inputs.neighbours[owner] if owner in table.get(v, {})),
        key=inputs.index.__getitem__,
    )
    if len(holders) < inputs.t:
        raise SecAggError(
            f"below threshold: only {len(holders)} shares of the {kind} of {owner!r} arrived, "
            f"t={inputs.t} needed; nothing can be revealed"
        )
    # The lowest indices first: in the complete graph every owner then uses the same
    # x-coordinates and the Lagrange coefficients come from the cache.
    shares = [Share(inputs.index[v], table[v][owner]) for v in holders[: inputs.t]]
    try:
        return reconstruct_secret(shares, inputs.t)
    except SecAggError as exc:
        raise SecAggError(f"cannot rebuild the {kind} of {owner!r}: {exc}") from exc


def mask_plan(inputs: UnmaskInputs) -> list[tuple[bytes, int]]:
    """PRG keys and signs that turn the sum of masked inputs into the sum of inputs.

    Survivors' self masks are subtracted; for each dropped device its masking key is
    rebuilt from t shares and checked against its advertised public key, and the pairwise
    masks its surviving neighbours added are cancelled.

    Raises
    ------
    SecAggError
        If some secret has fewer than t shares or a rebuilt secret does not match its
        commitment/public key (a corrupted share).
    """
    plan: list[tuple[bytes, int]] = []
    for u in sorted(inputs.survivors):
        seed = _rebuild(u, inputs, inputs.seed_shares, "self-mask seed")
        if seed_commitment(seed, inputs.round_id, u) != inputs.advertisements[u].seed_commitment:
            raise SecAggError(f"rebuilt self-mask seed of {u!r} does not match its commitment")
        plan.append((self_mask_key(seed, inputs.round_id, u), -1))
    for u in sorted(inputs.dropped):
        alive = sorted(inputs.neighbours[u] & inputs.survivors)
        if not alive:
            continue  # no survivor ever masked with u
        raw = _rebuild(u, inputs, inputs.key_shares, "masking key")
        key = X25519PrivateKey.from_private_bytes(raw)
        if x25519_public_bytes(key) != inputs.advertisements[u].mask_public_key:
            raise SecAggError(f"rebuilt masking key of {u!r} does not match its public key")
        for v in alive:
            shared = agree(key, inputs.advertisements[v].mask_public_key)
            plan.append((pair_mask_key(shared, inputs.round_id, u, v), -pair_mask_sign(v, u)))
    return plan

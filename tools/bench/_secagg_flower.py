"""Flower's SecAgg+ costs for the same points, timed call by call in Flower's own venv."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedge.tools.bench._secagg_round import PointResult

FLOWER_PYTHON = Path("/tmp/flwr-venv/bin/python")

FLOWER_DRIVER = r"""
import json, os, sys, time
import numpy as np
from flwr.common.secure_aggregation.crypto.shamir import combine_shares, create_shares
from flwr.common.secure_aggregation.crypto.symmetric_encryption import (
    decrypt, encrypt, generate_shared_key)
from flwr.common.secure_aggregation.ndarrays_arithmetic import parameters_addition, parameters_mod
from flwr.common.secure_aggregation.secaggplus_utils import (
    pseudo_rand_gen, share_keys_plaintext_concat, share_keys_plaintext_separate)
from flwr.supercore.primitives.asymmetric import (
    bytes_to_private_key, bytes_to_public_key, generate_key_pairs, private_key_to_bytes,
    public_key_to_bytes)

p = json.loads(sys.stdin.read())
k, t, budget, mod = p["k"], p["t"], p["unit_budget_s"], 1 << 32
calls = {}

def unit(name, fn):
    # Mean seconds of one call of fn: at least one call, more while within the budget.
    done, spent = 0, 0.0
    while done == 0 or spent < budget:
        t0 = time.process_time(); fn(); spent += time.process_time() - t0; done += 1
    calls[name] = done
    return spent / done

def keypair():
    sk, pk = generate_key_pairs()
    return private_key_to_bytes(sk), public_key_to_bytes(pk)

sk1, pk1 = keypair()
sk2, pk2 = keypair()
peer_sk, peer_pk = keypair()
rd_seed = os.urandom(32)
b_shares = create_shares(rd_seed, t, k + 1)
sk1_shares = create_shares(sk1, t, k + 1)
peer_key = generate_shared_key(bytes_to_private_key(sk2), bytes_to_public_key(peer_pk))
blob = encrypt(peer_key, share_keys_plaintext_concat(1, 2, b_shares[1], sk1_shares[1]))

def share_peer():
    key = generate_shared_key(bytes_to_private_key(sk2), bytes_to_public_key(peer_pk))
    encrypt(key, share_keys_plaintext_concat(1, 2, b_shares[1], sk1_shares[1]))

u = {
    "keygen": unit("keygen", keypair),
    "create_seed": unit("create_seed", lambda: create_shares(rd_seed, t, k + 1)),
    "create_sk": unit("create_sk", lambda: create_shares(sk1, t, k + 1)),
    "share_peer": unit("share_peer", share_peer),
    "decrypt": unit("decrypt", lambda: share_keys_plaintext_separate(decrypt(peer_key, blob))),
    "ecdh": unit("ecdh", lambda: generate_shared_key(
        bytes_to_private_key(sk1), bytes_to_public_key(peer_pk))),
    "combine_seed": unit("combine_seed", lambda: combine_shares(b_shares[:t])),
    "combine_sk": unit("combine_sk", lambda: combine_shares(sk1_shares[:t])),
}
out = {"units": u, "calls": calls, "per_d": {}}
S, Dr, P = p["survivors"], p["dropped"], p["pairs"]
for d in p["dims"]:
    acc = [np.zeros(d, dtype=np.int64)]
    mask = lambda: parameters_addition(acc, pseudo_rand_gen(rd_seed, mod, [(d,)]))
    prg = unit(f"prg_add_{d}", mask)
    mod_s = unit(f"mod_{d}", lambda: parameters_mod(acc, mod))
    out["per_d"][str(d)] = {
        "client_share_s": 2 * u["keygen"] + u["create_seed"] + u["create_sk"] + k * u["share_peer"],
        "client_mask_s": k * u["decrypt"] + prg + k * (u["ecdh"] + prg) + mod_s,
        "server_unmask_s": S * (u["combine_seed"] + prg) + Dr * u["combine_sk"]
        + P * (u["ecdh"] + prg) + mod_s,
    }
print(json.dumps(out))
"""


def run_flower(
    points: Sequence[PointResult], dropped: int, unit_budget_s: float
) -> list[dict[str, Any]]:
    """Flower's SecAgg+ costs for the points of one (n, dropout), one dict per point.

    Every Flower call on the path (see ``tools.bench.secagg``'s docstring) is timed in Flower's own
    venv (mean over at least one call and up to ``unit_budget_s`` seconds of calls) and
    multiplied by how often the path makes it for these n, k, t and dropouts.
    """
    first = points[0]
    params = {
        "k": first.k,
        "t": first.t,
        "dims": [p.d for p in points],
        "survivors": first.n - dropped,
        "dropped": dropped,
        "pairs": first.server["pairwise_masks"],
        "unit_budget_s": unit_budget_s,
    }
    proc = subprocess.run(
        [str(FLOWER_PYTHON), "-c", FLOWER_DRIVER],
        input=json.dumps(params),
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    if proc.returncode != 0:
        error = proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed"
        return [{"error": error} for _ in points]
    out = json.loads(proc.stdout)
    return [
        {**out["per_d"][str(p.d)], "units_s": out["units"], "calls": out["calls"]} for p in points
    ]

"""Flower's SecAgg+ maths for one round, in process, timed like ours (bench/perf/perf_scale.py).

Runs under a Python that has `flwr` (1.27.0; `make perf` makes .venv-flower) and calls only
Flower's own public primitives — EC key pairs (SECP384R1), ECDH + HKDF + Fernet for the shares,
PyCryptodome Shamir, NumPy MT19937 masks seeded from the key material, stochastic quantisation,
int64 arithmetic — in the order of Flower's SecAgg+ workflow (read from its source; see
docs/scale.md): setup -> share keys -> masked input -> unmask. The network is left out on
purpose: the same n, k, threshold, size and dropouts as our row, the maths side by side.

Prints one JSON line: mean per-client seconds (setup + share keys + decrypt + quantise + mask),
the server's unmask seconds, and the bytes a client uploads for its masked vector.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
from flwr.common.secure_aggregation.crypto.shamir import combine_shares, create_shares
from flwr.common.secure_aggregation.crypto.symmetric_encryption import (
    decrypt,
    encrypt,
    generate_shared_key,
)
from flwr.common.secure_aggregation.ndarrays_arithmetic import (
    factor_combine,
    parameters_addition,
    parameters_mod,
    parameters_subtraction,
)
from flwr.common.secure_aggregation.quantization import quantize
from flwr.common.secure_aggregation.secaggplus_utils import (
    pseudo_rand_gen,
    share_keys_plaintext_concat,
    share_keys_plaintext_separate,
)
from flwr.supercore.primitives.asymmetric import (
    bytes_to_private_key,
    generate_key_pairs,
    private_key_to_bytes,
)

CLIP, QRANGE, MOD, MAX_WEIGHT = 8.0, 2**22, 2**32, 1000  # Flower's defaults


def ring(n: int, k: int) -> dict[int, list[int]]:
    """k/2 neighbours on either side of a ring (Flower's Harary-style graph, unshuffled)."""
    half = k // 2
    return {i: sorted({(i + d) % n for d in range(-half, half + 1)} - {i}) for i in range(n)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--params", type=int, required=True)
    ap.add_argument("--neighbours", type=int, required=True)
    ap.add_argument("--threshold", type=int, required=True)
    ap.add_argument("--drop", type=int, default=0, help="sites that drop after share keys")
    a = ap.parse_args()
    n, dims = a.n, [(a.params,)]
    nb = ring(n, a.neighbours)
    rng = np.random.default_rng(1)
    vec = {i: [rng.standard_normal(a.params).astype(np.float32) * 0.05] for i in range(n)}
    dead = set(range(0, n, max(1, n // a.drop))[: a.drop]) if a.drop else set()
    client_s = dict.fromkeys(range(n), 0.0)

    def timed(i, fn, *args):
        t = time.perf_counter()
        out = fn(*args)
        client_s[i] += time.perf_counter() - t
        return out

    # setup: two key pairs per client (masks, share encryption)
    keys = {i: timed(i, lambda: (generate_key_pairs(), generate_key_pairs())) for i in range(n)}
    pk1 = {i: keys[i][0][1] for i in range(n)}
    pk2 = {i: keys[i][1][1] for i in range(n)}

    # share keys: Shamir shares of b and sk1 for the closed neighbourhood, encrypted per peer
    seeds, inbox, own = {}, {i: {} for i in range(n)}, {}

    def share(i):
        seeds[i] = os.urandom(32)
        group = [i, *nb[i]]
        b = create_shares(seeds[i], a.threshold, len(group))
        sk = create_shares(private_key_to_bytes(keys[i][0][0]), a.threshold, len(group))
        for j, bs, ss in zip(group, b, sk, strict=True):
            if j == i:
                own[i] = (bs, ss)
                continue
            key = generate_shared_key(keys[i][1][0], pk2[j])
            inbox[j][i] = encrypt(key, share_keys_plaintext_concat(i, j, bs, ss))

    for i in range(n):
        timed(i, share, i)

    # masked input (the dead never send theirs)
    held, masked = {i: {i: own[i]} for i in range(n)}, {}

    def mask(i):
        for j, ct in inbox[i].items():
            _, _, bs, ss = share_keys_plaintext_separate(
                decrypt(generate_shared_key(keys[i][1][0], pk2[j]), ct)
            )
            held[i][j] = (bs, ss)
        q = quantize([v * (100 / MAX_WEIGHT) for v in vec[i]], CLIP, QRANGE)
        q = factor_combine(100, q)
        out = parameters_addition(q, pseudo_rand_gen(seeds[i], MOD, [(1,), *dims]))
        for j in nb[i]:
            pair = pseudo_rand_gen(generate_shared_key(keys[i][0][0], pk1[j]), MOD, [(1,), *dims])
            out = parameters_addition(out, pair) if i > j else parameters_subtraction(out, pair)
        return parameters_mod(out, MOD)

    for i in range(n):
        if i not in dead:
            masked[i] = timed(i, mask, i)
    alive = sorted(masked)

    # unmask at the server: the survivors hand in b shares for the living, sk1 for the dead
    t0 = time.perf_counter()
    total = [np.zeros(1, np.int64), np.zeros(a.params, np.int64)]
    for i in alive:
        total = parameters_addition(total, masked[i])
    for i in alive:
        b = combine_shares([held[j][i][0] for j in [i, *nb[i]] if j in masked][: a.threshold])
        total = parameters_subtraction(total, pseudo_rand_gen(b, MOD, [(1,), *dims]))
    for d in sorted(dead):
        sk = bytes_to_private_key(
            combine_shares([held[j][d][1] for j in nb[d] if j in masked][: a.threshold])
        )
        for j in nb[d]:
            if j in masked:
                pair = pseudo_rand_gen(generate_shared_key(sk, pk1[j]), MOD, [(1,), *dims])
                # j added +pair if j > d, else -pair: cancel it
                total = (parameters_subtraction if j > d else parameters_addition)(total, pair)
    total = parameters_mod(total, MOD)
    server_s = time.perf_counter() - t0
    weight = int(total[0][0])
    if weight != 100 * len(alive):  # the quantised weight factors must sum exactly
        raise SystemExit(f"Flower unmask gave weight {weight}, not {100 * len(alive)}")
    print(
        json.dumps(
            {
                "client_s": float(np.mean([client_s[i] for i in alive])),
                "server_s": server_s,
                "bytes_up": int(sum(x.nbytes for x in masked[alive[0]])),
                "flwr": _version(),
            }
        )
    )


def _version() -> str:
    from importlib.metadata import version

    return version("flwr")


if __name__ == "__main__":
    main()

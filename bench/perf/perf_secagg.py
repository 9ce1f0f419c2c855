"""Secure-aggregation cost against plain aggregation, measured in the same run.

`python bench/perf/perf_secagg.py [--params 1200000 10000000] [--sites 5] [--repeats 5]`

Per size: the plain path (client: n_k * params in float32; server: the float32 sum of the sites'
weighted updates) and the secure path (client: quantise, then mask: decrypt the shares, X25519 +
HKDF per neighbour, AES-CTR masks; server: receive the masked vectors, Shamir-combine, remove the
masks; with no dropout and with one site dropping after share keys, whose pairwise masks the server
must regenerate). Medians over the repeats; each repeat is a fresh round with fresh keys. Prints a
markdown table, ratios against the plain path of the same size.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from common.secagg import (
    SecAggClient,
    SecAggServer,
    dequantize,
    quantization_error_bound,
    quantization_scale,
    quantize,
)


def _t(fn, *args):
    t = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t


def one_round(params, weights, scale, clip, drop_after_shares=(), neighbours=None, threshold=3):
    """One secure round in process; returns per-client and server timings (s) and bytes.
    ``neighbours``: SecAgg+'s k (None: the complete graph)."""
    sites = sorted(params)
    n = len(params[sites[0]])
    clients = {s: SecAggClient(s, "bench", 1) for s in sites}
    srv = SecAggServer("bench", 1, sites, threshold, n, neighbours=neighbours)
    t_setup = {}
    adv = {}
    for s, c in clients.items():
        adv[s], t_setup[s] = _t(c.advertise_keys)
    u1 = srv.receive_keys(adv)
    cts = {}
    for s in sites:
        cts[s], dt = _t(clients[s].share_keys, u1, threshold, srv.neighbours_of(s))
        t_setup[s] += dt
    routed = srv.route_shares(cts)
    masked, t_q, t_m = {}, [], []
    for s in routed:
        if s in drop_after_shares:
            continue
        (q, _clipped), dq = _t(quantize, params[s] * weights[s], weights[s], clip, scale)
        masked[s], dm = _t(clients[s].masked_input, routed[s], q)
        t_q.append(dq)
        t_m.append(dm)
    (surv, dropped), t_recv = _t(srv.receive_masked, masked)
    tags, t_reveal = {}, {}
    for s in surv:  # the consistency check, then the shares
        tags[s], t_reveal[s] = _t(clients[s].confirm, surv)
    routed_tags, t_route = _t(srv.route_confirmations, tags)
    shares = {}
    for s in routed_tags:
        shares[s], dt = _t(clients[s].unmask, surv, dropped, routed_tags[s])
        t_reveal[s] += dt
    total, t_unmask = _t(srv.unmask, shares)
    return {
        "total": total,
        "survivors": surv,
        "setup": statistics.mean(t_setup.values()),
        "quantize": statistics.mean(t_q),
        "mask": statistics.mean(t_m),
        "reveal": statistics.mean(t_reveal.values()),
        "server": t_recv + t_route + t_unmask,
        "bytes": next(iter(masked.values())).nbytes,
    }


def bench(n: int, n_sites: int, repeats: int, clip: float = 8.0) -> dict[str, float]:
    rng = np.random.default_rng(0)
    sites = [f"site{i}" for i in range(1, n_sites + 1)]
    params = {s: rng.normal(0, 0.05, n).astype(np.float32) for s in sites}
    weights = {s: int(rng.integers(200, 2000)) for s in sites}
    scale = quantization_scale(clip, float(sum(weights.values())))
    med: dict[str, list[float]] = {}

    def add(key, value):
        med.setdefault(key, []).append(value)

    for _ in range(repeats):
        t0 = time.perf_counter()
        contrib = {s: params[s] * np.float32(weights[s]) for s in sites}  # plain client
        add("plain_client", (time.perf_counter() - t0) / n_sites)
        t0 = time.perf_counter()
        acc = np.zeros(n, np.float32)
        for s in sites:
            acc += contrib[s]
        add("plain_server", time.perf_counter() - t0)
        r0 = one_round(params, weights, scale, clip)
        r1 = one_round(params, weights, scale, clip, drop_after_shares=(sites[-1],))
        for k in ("setup", "quantize", "mask"):
            add(k, r0[k])
        add("server0", r0["server"])
        add("server1", r1["server"])
    # correctness in the same run: the secure sum is the float64 sum within the derived bound
    # (of the very float32 vectors that were quantised, n_k * params)
    exact = sum(contrib[s].astype(np.float64) for s in sites)
    err = float(np.abs(dequantize(r0["total"], scale) - exact).max())
    bound = quantization_error_bound(n_sites, scale)
    if err > bound:
        raise RuntimeError(f"secure sum off by {err} > bound {bound}")
    out = {k: statistics.median(v) for k, v in med.items()}
    out["client"] = statistics.median(
        q + m for q, m in zip(med["quantize"], med["mask"], strict=True)
    )
    out.update(bytes_plain=float(contrib[sites[0]].nbytes), bytes_secagg=float(r0["bytes"]))
    out.update(err=err, bound=bound, f32_err=float(np.abs(acc - exact).max()))
    return out


def _ms(x: float, base: float | None = None) -> str:
    return f"{1e3 * x:.1f} ms" + (f" ({x / base:.1f}×)" if base else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--params", type=int, nargs="+", default=[1_200_000, 10_000_000])
    ap.add_argument("--sites", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    res = {n: bench(n, args.sites, args.repeats) for n in args.params}
    heads = [f"{n / 1e6:g}M params" for n in args.params]
    print(f"| {args.sites} sites, t=3, complete graph | " + " | ".join(heads) + " |")
    print("|---|" + "---|" * len(heads))
    rows = [  # (label, key, baseline key for the ratio)
        ("plain client: n_k·params (float32)", "plain_client", None),
        ("plain server: float32 sum of the updates (baseline)", "plain_server", None),
        ("secagg client: advertise + share keys", "setup", None),
        ("secagg client: quantise", "quantize", None),
        ("secagg client: mask (decrypt shares, X25519, AES-CTR)", "mask", None),
        ("secagg client: quantise + mask (× plain client)", "client", "plain_client"),
        ("secagg server: unmask, 0 dropped (× plain server)", "server0", "plain_server"),
        ("secagg server: unmask, 1 dropped after share keys", "server1", "plain_server"),
    ]
    for name, key, base in rows:
        cells = [_ms(res[n][key], res[n][base] if base else None) for n in args.params]
        print(f"| {name} | " + " | ".join(cells) + " |")
    up = [res[n]["bytes_secagg"] for n in args.params]
    ratio = [res[n]["bytes_secagg"] / res[n]["bytes_plain"] for n in args.params]
    cells = [f"{b / 2**20:.2f} ({x:.2f}×)" for b, x in zip(up, ratio, strict=True)]
    print("| upload per client, MiB (× float32) | " + " | ".join(cells) + " |")
    cells = [
        f"{res[n]['err']:.2g} / {res[n]['bound']:.2g} / {res[n]['f32_err']:.2g}"
        for n in args.params
    ]
    print("| max error of the sum: secagg / bound / plain float32 | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

"""Distributed DP-SGD's own cost per round (``ddp-sgd``), without the training.

`python bench/perf/perf_ddp.py [--params 262777 1230373] [--sites 5] [--repeats 3]`

Per model size d: what a site adds to its training in a round — its Skellam noise share and the
reduction to Z_2^32 (``common.training.ddp``), its secure-aggregation work (fresh keys, shares,
the masks of its integer vector: ``SecAggClient``) — and what the server does (route the shares,
remove the masks, divide by s: ``SecAggServer``, ``from_ring_sum``), medians over fresh rounds in
one process. The round's training time is printed beside it when given (``--train-s``: the
slowest site's per-round training time from a run's history.json, e.g. 2.6 s on the standard
profile). Network transfer is not included (4 bytes per parameter up, 4 down).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from common.secagg import SecAggClient, SecAggServer
from common.training.ddp import from_ring_sum, make_plan, skellam, to_ring


def one_round(d: int, n_sites: int, t: int, mu_share: float, rng) -> dict:
    sites = [chr(ord("A") + i) for i in range(n_sites)]
    clients = {s: SecAggClient(s, "perf", 1) for s in sites}
    srv = SecAggServer("perf", 1, sites, t, d)
    site_s = dict.fromkeys(sites, 0.0)
    adv = {}
    for s in sites:
        t0 = time.perf_counter()
        adv[s] = clients[s].advertise_keys()
        site_s[s] += time.perf_counter() - t0
    t0 = time.perf_counter()
    u1 = srv.receive_keys(adv)
    server_s = time.perf_counter() - t0
    cts = {}
    for s in sites:
        t0 = time.perf_counter()
        cts[s] = clients[s].share_keys(u1, t, srv.neighbours_of(s))
        site_s[s] += time.perf_counter() - t0
    t0 = time.perf_counter()
    routed = srv.route_shares(cts)
    server_s += time.perf_counter() - t0
    masked, noise_s = {}, []
    data = rng.integers(-(2**20), 2**20, d)  # stands in for the rounded clipped gradient sum
    for s in sites:
        t0 = time.perf_counter()
        vec = to_ring(data + skellam(rng, mu_share, d))
        noise_s.append(time.perf_counter() - t0)
        masked[s] = clients[s].masked_input(routed[s], vec)
        site_s[s] += time.perf_counter() - t0
    t0 = time.perf_counter()
    surv, dropped = srv.receive_masked(masked)
    tags = srv.route_confirmations({s: clients[s].confirm(surv) for s in surv})
    shares = {s: clients[s].unmask(surv, dropped, tags[s]) for s in tags}
    server_s += time.perf_counter() - t0
    t0 = time.perf_counter()
    from_ring_sum(srv.unmask(shares), 1e4)
    server_s += time.perf_counter() - t0
    return {
        "site_s": statistics.median(site_s.values()),
        "noise_s": statistics.median(noise_s),
        "server_s": server_s,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--params", type=int, nargs="+", default=[262_777, 1_230_373])
    p.add_argument("--sites", type=int, default=5)
    p.add_argument("--threshold", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--train-s",
        type=float,
        nargs="*",
        default=[],
        help="per-round training time of the slowest site for each size (s)",
    )
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    print(
        "| parameters | site: noise share + ring | site: all (keys, shares, noise, masks) | "
        "server: route + unmask | training per round |\n|---|---|---|---|---|"
    )
    for i, d in enumerate(args.params):
        plan = make_plan(
            q=1.0,
            clip=1.0,
            dim=d,
            threshold=args.threshold,
            rounds=25,
            delta=1e-5,
            target_epsilon=4.0,
        )
        runs = [
            one_round(d, args.sites, args.threshold, plan.mu_share, rng)
            for _ in range(args.repeats)
        ]
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        train = f"{args.train_s[i]:.2f} s" if i < len(args.train_s) else "n/a"
        print(
            f"| {d:,} | {med['noise_s']:.3f} s | {med['site_s']:.3f} s | "
            f"{med['server_s']:.3f} s | {train} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

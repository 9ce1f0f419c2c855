"""The federation's own cost from 5 to 100 sites: the real server, lightweight sites.

`python bench/perf/perf_scale.py [--sites 5 10 20 50 100] [--bases 24 52]
    [--graphs complete secagg+] [--dropouts 0 0.1] [--rounds 3] [--flower PYTHON]`

For each (n, model size, graph, dropout) one fresh federation of the ``groupnorm`` method: the
real server (``server.app.Server`` under ``server.campaign.serve_campaign``: servicer, round
state, limits, the strategy, the server's evaluation, checkpoints and run files) over a roster of
n sites (``common.config.default_roster``) and a tiny generated dataset of those n sites, and n
lightweight sites in ``--workers`` processes (a thread per site, its own channel) that speak the
real protocol with the real site code (``client.secure``: keys, Shamir shares, AES masks) but
answer the global model with a seeded perturbation of it instead of training, so only the
federation's cost is measured. ``--bases``: the U-Net's base width (24: the standard profile's
262,777 parameters; 52: the paper's 1,230,373).
SecAgg+ uses a k-regular graph, k = 2*ceil(log2 n) (even; the complete graph when k >= n-1).
Dropouts: that fraction of the sites (every 10th) declines the masked-input stage after sharing
its keys, each round: the server must rebuild their pairwise masks from the survivors' shares.
A decline is immediate: failure *detection* (heartbeats, deadlines) is not part of the cost.

Correct in the same run: the server process replays the sites' perturbations over the rounds'
survivors and fails the row if its final model is off by more than the rounds' quantisation
bounds. Per configuration (medians over rounds 2..R; round 1 warms connections up): the fit
phase's wall time as the server sees it, the server's evaluation, the server process's CPU time
per round (all threads) and peak RSS, bytes up and down per site, the server's unmask step, and
the sites' mean CPU per round. Every site's work shares this machine's cores, so the wall time is
an upper bound on what sites on their own machines would see. With ``--flower PYTHON`` (a Python
with flwr installed, e.g. .venv-flower/bin/python; `make perf` creates it) the
secure-aggregation maths alone, ours and Flower's SecAgg+ primitives, run side by side in process
at the same n, k, size and dropout (bench/perf/flower_secaggplus.py). Writes OUT/scale.json,
OUT/scale.md and plots/scale.png (log-log) under OUT.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from bench.fleet import spawn, stop, wait_for_port  # noqa: E402
from common.config import default_roster, load_profile, parse_config  # noqa: E402

METHOD = "groupnorm"  # FedAvg over every parameter (GroupNorm: no buffers, nothing kept local)
STANDARD_BASE, PAPER_BASE = 24, 52  # 262,777 and 1,230,373 parameters
WEIGHT = 100  # every site's n_k
PERTURBATION = np.float32(0.01)


def neighbours_for(n: int, graph: str) -> int | None:
    """SecAgg+: k = 2*ceil(log2 n), None (complete) when that reaches n-1."""
    if graph == "complete":
        return None
    k = 2 * math.ceil(math.log2(n))
    return None if k >= n - 1 else k


def threshold_for(n: int, k: int | None) -> int:
    """t: a majority of a closed neighbourhood (k+1 sites), at least 2."""
    size = n if k is None else k + 1
    return max(2, size // 2 + 1)


def dropping(sites: list[str], fraction: float) -> set[str]:
    """Every 10th site (for 10%): spread over the hash-ordered graph, deterministic."""
    k = int(round(fraction * len(sites)))
    return set(sites[:: max(1, len(sites) // k)][:k]) if k else set()


def scale_config(n: int, base: int = STANDARD_BASE, graph: str = "secagg+", rounds: int = 3):
    """The smoke profile over a roster of n sites: the U-Net of ``base``, secure aggregation on
    the graph and threshold for n, one slice per site and split (the server evaluates n test
    slices a round), generous timeouts (only the federation's cost is measured)."""
    k = neighbours_for(n, graph)
    t = threshold_for(n, k)
    data = load_profile("smoke").model_dump(mode="json")
    data["sites"] = [{"name": s.name} for s in default_roster(n)]
    data["model"] |= {"base": base, "norm": "group"}
    data["train"] |= {"rounds": rounds}
    data["data"] |= {
        "image_size": 32,
        "train_total": n,
        "holdout_per_site": 1,
        "test_per_site": 1,
        "attacker_size": 0,
    }
    data["fl"] |= {
        "heartbeat_s": 30.0,
        "round_timeout_s": 600.0,
        "wait_for_sites_s": 600.0,
        "min_fit_sites": t,
    }
    data["secagg"] |= {"enabled": True, "neighbours": k, "threshold": t}
    data["mia"]["enabled"] = False
    return parse_config(data, f"scale config (n={n}, base={base}, {graph})")


def perturbation(like: dict[str, np.ndarray], rnd: int, index: int) -> dict[str, np.ndarray]:
    """What site ``index`` (its roster position) adds to the global model in round ``rnd``:
    seeded noise of the model's shapes, in sorted key order (no training)."""
    rng = np.random.default_rng([rnd, index])
    return {
        k: rng.standard_normal(np.shape(like[k])).astype(np.float32) * PERTURBATION
        for k in sorted(like)
    }


# -- the server process -------------------------------------------------------------------------


def replay_error(initial: dict, final: dict, history, sites: list[str]) -> tuple[float, float]:
    """(largest |final - expected|, its bound): the expected model is the initial one plus, each
    round, the mean of the survivors' perturbations (every site weighs WEIGHT); the bound sums
    each round's quantisation bound on the mean, plus float32 rounding of the model."""
    index = {s: i for i, s in enumerate(sites)}
    expected = {k: v.astype(np.float64) for k, v in initial.items()}
    bound = 0.0
    for rec in history:
        survivors = rec.secagg["survivors"]
        for s in survivors:
            for k, d in perturbation(initial, rec.round, index[s]).items():
                expected[k] += d.astype(np.float64) / len(survivors)
        bound += rec.secagg["error_bound_sum"] / rec.fit.total_weight
    top = max(float(np.abs(v).max()) for v in expected.values())
    bound += len(history) * 2 * float(np.finfo(np.float32).eps) * max(1.0, top)
    err = max(float(np.abs(final[k] - expected[k]).max()) for k in expected)
    return err, bound


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM). Not ru_maxrss: Linux carries that across
    fork + exec, so a server spawned by a large driver would report the driver's size."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def serve(args) -> int:
    """One federation's server: the real ``Server`` in ``serve_campaign``; then the check of
    its final model and the per-round rows its history holds."""
    from server.app import Server
    from server.campaign import federation_message_limit, serve_campaign

    cfg = scale_config(args.n, args.base, args.graph, args.rounds)
    server = Server(cfg, METHOD, Path(args.data), Path(args.run_dir), resume=False)
    initial = dict(server.params)
    serve_campaign(
        [lambda: server],
        "127.0.0.1:0",
        Path(args.port_file),
        max_message_bytes=federation_message_limit(cfg, [METHOD]),
        sites=args.n,
    )
    history = server.history
    if len(history) != args.rounds or any(r.aborted for r in history):
        raise RuntimeError(f"rounds aborted or missing: {[r.aborted for r in history]}")
    err, bound = replay_error(initial, server.params, history, cfg.site_names)
    if err > bound:
        raise RuntimeError(f"the federation's model is off by {err} > the bound {bound}")
    rows = [
        {
            "round": r.round,
            "fit_s": r.timing_s["fit_phase"],
            "evaluate_s": r.timing_s["evaluate"],
            "server_cpu_s": r.timing_s["server_cpu"],
            "survivors": len(r.secagg["survivors"]),
            "dropped": len(r.secagg["dropped"]),
            "steps_s": r.secagg["server_steps_s"],
            "bytes_down": r.bytes_down_per_site,
        }
        for r in history
    ]
    out = {
        "params": sum(v.size for v in initial.values()),
        "rounds": rows,
        "peak_rss_mb": peak_rss_mb(),
        "max_err": err,
        "error_bound": bound,
    }
    Path(args.out).write_text(json.dumps(out))
    return 0


# -- the sites' processes -----------------------------------------------------------------------


def light_site(site: str, index: int, server: str, drops: bool, out: dict) -> None:
    """A site that speaks the real protocol (client.secure) and answers each round's global model
    with the model plus its seeded perturbation (``index``: its roster position)."""
    from client.secure import PendingUpdate, advertise_request, stage_answer
    from common.secagg import SecAggClient, flatten, round_digest
    from common.wire.channel import create_channel
    from common.wire.rpc import federation_pb2 as pb
    from common.wire.rpc import federation_pb2_grpc as pb_grpc
    from common.wire.serde import proto_to_ndarrays, scalars_from_proto

    stub = pb_grpc.FederationStub(create_channel(server))
    up = down = 0
    cpu: dict[int, float] = {}

    def call(name, request, timeout=600.0):
        nonlocal up, down
        up += request.ByteSize()
        resp = getattr(stub, name)(request, timeout=timeout, wait_for_ready=True)
        down += resp.ByteSize()
        return resp

    run_id = call("RegisterSite", pb.RegisterSiteRequest(site_id=site)).run_id
    secagg = pending = None
    last, bytes_at = 0, {}
    while True:
        resp = call("PullTask", pb.PullTaskRequest(site_id=site, run_id=run_id, round=last))
        kind = resp.WhichOneof("task")
        t0 = time.thread_time()
        if kind == "fit":
            rnd = resp.fit.round
            bytes_at[rnd] = (up, down - resp.ByteSize())
            glob = proto_to_ndarrays(resp.fit.tensors)
            delta = perturbation(glob, rnd, index)
            update = {k: glob[k] + delta[k] for k in glob}
            weighted = flatten(update, sorted(update)) * WEIGHT
            digest = round_digest(glob, scalars_from_proto(resp.fit.config))
            secagg = SecAggClient(site, run_id, rnd)
            pending = PendingUpdate(rnd, weighted, WEIGHT, digest=digest)
            call("AdvertiseKeys", advertise_request(site, run_id, secagg, pending, {}))
            last = rnd
        elif kind == "secagg":
            task = resp.secagg
            if drops and task.WhichOneof("stage") == "masked_input":
                call(
                    "Decline",
                    pb.DeclineRequest(
                        site_id=site,
                        run_id=run_id,
                        round=task.round,
                        reason="scale benchmark: dropping",
                    ),
                )
            else:
                name, request = stage_answer(site, run_id, secagg, pending, task)
                call(name, request)
        elif kind == "finished":
            break
        if kind in ("fit", "secagg"):
            cpu[last] = cpu.get(last, 0.0) + time.thread_time() - t0
    bytes_at[last + 1] = (up, down)
    per_round = {
        r: (bytes_at[r + 1][0] - bytes_at[r][0], bytes_at[r + 1][1] - bytes_at[r][1])
        for r in range(1, last + 1)
    }
    out[site] = {"cpu_s": cpu, "bytes": per_round}


def sites_worker(args) -> int:
    ids = args.ids.split(",")
    index = {s.name: i for i, s in enumerate(default_roster(args.n))}
    drops = set(args.drop.split(",")) if args.drop else set()
    out: dict = {}
    threads = [
        threading.Thread(target=light_site, args=(s, index[s], args.server, s in drops, out))
        for s in ids
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    missing = sorted(set(ids) - set(out))
    Path(args.out).write_text(json.dumps(out))
    return 1 if missing else 0


# -- the driver ---------------------------------------------------------------------------------


def scale_data(n: int, tmp: Path) -> Path:
    """The n-site dataset every federation of n sites uses (generated once per directory)."""
    from common.data.build import build_dataset

    data = tmp / f"data-n{n}"
    if not (data / "manifest.json").is_file():
        build_dataset(scale_config(n), data, workers=1, gallery=False, force=True)
    return data


def one_federation(
    n: int, base: int, graph: str, dropout: float, rounds: int, workers: int, tmp: Path
) -> dict:
    me = [sys.executable, str(Path(__file__).resolve())]
    sites = [s.name for s in default_roster(n)]
    drops = dropping(sites, dropout)
    tag = f"n{n}-b{base}-{graph}-d{dropout:g}"
    port_file, server_out = tmp / f"{tag}.port", tmp / f"{tag}.server.json"
    for stale in tmp.glob(f"{tag}.*"):  # an earlier run's port file would send the sites astray
        shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    data = scale_data(n, tmp)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    server = spawn(
        [
            *me,
            "serve",
            *("--n", str(n), "--base", str(base), "--graph", graph, "--rounds", str(rounds)),
            *("--data", str(data), "--run-dir", str(tmp / f"{tag}.run")),
            *("--port-file", str(port_file), "--out", str(server_out)),
        ],
        tmp / f"{tag}.server.log",
        env,
    )
    port = wait_for_port(port_file, server, tmp / f"{tag}.server.log", timeout=120)
    address = f"127.0.0.1:{port}"
    procs = []
    for w in range(workers):
        ids = sites[w::workers]
        procs.append(
            spawn(
                [
                    *me,
                    "sites",
                    *("--n", str(n), "--ids", ",".join(ids), "--server", address),
                    *("--drop", ",".join(sorted(drops & set(ids)))),
                    *("--out", str(tmp / f"{tag}.sites{w}.json")),
                ],
                tmp / f"{tag}.sites{w}.log",
                env,
            )
        )
    try:
        for p in [server, *procs]:
            if p.wait(timeout=3600) != 0:
                raise RuntimeError(f"{tag}: a process exited {p.returncode}; see {tmp}/{tag}.*.log")
    finally:
        stop([server, *procs])
    srv = json.loads(server_out.read_text())
    site_rows: dict = {}
    for w in range(workers):
        site_rows.update(json.loads((tmp / f"{tag}.sites{w}.json").read_text()))
    measured = srv["rounds"][1:] or srv["rounds"]
    rounds_ = [r["round"] for r in measured]

    def med(key):
        return statistics.median(r[key] for r in measured)

    live = [s for s in sites if s not in drops]
    k = neighbours_for(n, graph)
    return {
        "n": n,
        "base": base,
        "params": srv["params"],
        "graph": graph,
        "k": k,
        "dropout": dropout,
        "dropped": len(drops),
        "threshold": threshold_for(n, k),
        "round_wall_s": med("fit_s"),
        "evaluate_s": med("evaluate_s"),
        "server_cpu_s": med("server_cpu_s"),
        "unmask_s": statistics.median(r["steps_s"].get("unmask", 0.0) for r in measured),
        "server_secagg_s": statistics.median(sum(r["steps_s"].values()) for r in measured),
        "peak_rss_mb": srv["peak_rss_mb"],
        "max_err": srv["max_err"],
        "error_bound": srv["error_bound"],
        "bytes_up_per_site": statistics.median(
            site_rows[s]["bytes"][str(r)][0] for s in live for r in rounds_
        ),
        "bytes_down_per_site": statistics.median(
            site_rows[s]["bytes"][str(r)][1] for s in live for r in rounds_
        ),
        "site_cpu_s": statistics.mean(
            site_rows[s]["cpu_s"].get(str(r), 0.0) for s in live for r in rounds_
        ),
        "rounds": srv["rounds"],
    }


def maths(n: int, params: int, graph: str, dropout: float, flower: str | None) -> dict:
    """The secure-aggregation maths alone, in process: ours, and Flower's when given."""
    from bench.perf.perf_secagg import one_round
    from common.secagg import quantization_scale

    sites = [s.name for s in default_roster(n)]
    k = neighbours_for(n, graph)
    t = threshold_for(n, k)
    rng = np.random.default_rng(1)
    vec = {s: rng.standard_normal(params).astype(np.float32) * 0.05 for s in sites}
    w = dict.fromkeys(sites, 100.0)
    scale = quantization_scale(1.0, sum(w.values()), max_sites=n)
    r = one_round(
        vec, w, scale, 1.0, tuple(sorted(dropping(sites, dropout))), neighbours=k, threshold=t
    )
    client = r["setup"] + r["quantize"] + r["mask"] + r["reveal"]
    out = {"ours": {"client_s": client, "server_s": r["server"], "bytes_up": r["bytes"]}}
    if flower:
        cmd = [
            flower,
            str(Path(__file__).with_name("flower_secaggplus.py")),
            "--n",
            str(n),
            "--params",
            str(params),
            "--neighbours",
            str(k or n - 1),
            "--threshold",
            str(t),
            "--drop",
            str(len(dropping(sites, dropout))),
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
        if done.returncode != 0:
            out["flower"] = {"error": done.stderr.strip().splitlines()[-1:]}
        else:
            out["flower"] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] + " (see the module doc)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="cmd")
    s = sub.add_parser("serve")  # internal: the server process of one federation
    s.add_argument("--n", type=int, required=True)
    s.add_argument("--base", type=int, required=True)
    s.add_argument("--graph", required=True)
    s.add_argument("--rounds", type=int, required=True)
    s.add_argument("--data", required=True)
    s.add_argument("--run-dir", required=True)
    s.add_argument("--port-file", required=True)
    s.add_argument("--out", required=True)
    w = sub.add_parser("sites")  # internal: a process of lightweight sites
    w.add_argument("--n", type=int, required=True)
    w.add_argument("--ids", required=True)
    w.add_argument("--server", required=True)
    w.add_argument("--drop", default="")
    w.add_argument("--out", required=True)
    p.add_argument("--sites", type=int, nargs="+", default=[5, 10, 20, 50, 100])
    p.add_argument(
        "--bases",
        type=int,
        nargs="+",
        default=[STANDARD_BASE, PAPER_BASE],
        help="U-Net base widths (24: the standard profile's 262,777 parameters; 52: the paper's "
        "1,230,373)",
    )
    p.add_argument(
        "--graphs", nargs="+", default=["complete", "secagg+"], choices=["complete", "secagg+"]
    )
    p.add_argument("--dropouts", type=float, nargs="+", default=[0.0, 0.1])
    p.add_argument("--rounds", type=int, default=3, help="per federation; round 1 is warm-up")
    p.add_argument("--workers", type=int, default=2, help="site processes per federation")
    p.add_argument("--flower", metavar="PYTHON", help="a Python with flwr: also Flower's maths")
    p.add_argument("--no-maths", action="store_true", help="skip the in-process maths comparison")
    p.add_argument("--out", default=str(ROOT / "runs" / "perf-scale"))
    args = p.parse_args(argv)
    if args.cmd == "serve":
        return serve(args)
    if args.cmd == "sites":
        return sites_worker(args)
    return drive(args)


def drive(args) -> int:
    from tqdm import tqdm

    out = Path(args.out)
    tmp = out / "work"
    tmp.mkdir(parents=True, exist_ok=True)
    grid = [
        (n, d, g, f)
        for d in args.bases
        for g in args.graphs
        for f in args.dropouts
        for n in args.sites
    ]
    rows = []
    for n, d, g, f in tqdm(grid, desc="federations", unit="fed"):
        if g == "secagg+" and neighbours_for(n, g) is None and "complete" in args.graphs:
            continue  # the same graph as the complete one at this n
        row = one_federation(n, d, g, f, args.rounds, args.workers, tmp)
        # the maths side by side wherever the row is SecAgg+'s graph (complete at small n)
        if not args.no_maths and (g == "secagg+" or neighbours_for(n, "secagg+") is None):
            row["maths"] = maths(n, row["params"], g, f, args.flower)
        rows.append(row)
        (out / "scale.json").write_text(json.dumps(rows, indent=1))
    table = markdown(rows)
    (out / "scale.md").write_text(table)
    plot(rows, out / "plots" / "scale.png")
    print(table)
    return 0


def markdown(rows: list[dict]) -> str:
    head = (
        "| params | graph (k) | dropout | n | fit phase s | server eval s | server CPU s | "
        "unmask s | server RSS MB | up/site MiB | down/site MiB | site CPU s | "
        "ours maths: client / server s | Flower maths: client / server s |\n" + "|---" * 14 + "|\n"
    )
    lines = []
    for r in rows:
        m = r.get("maths", {})
        ours = m.get("ours")
        fl = m.get("flower")
        lines.append(
            f"| {r['params']:,} | {r['graph']} ({r['k'] or r['n'] - 1}) | {r['dropout']:.0%} | "
            f"{r['n']} | {r['round_wall_s']:.2f} | {r['evaluate_s']:.2f} | "
            f"{r['server_cpu_s']:.2f} | {r['unmask_s']:.2f} | "
            f"{r['peak_rss_mb']:.0f} | {r['bytes_up_per_site'] / 2**20:.2f} | "
            f"{r['bytes_down_per_site'] / 2**20:.2f} | {r['site_cpu_s']:.2f} | "
            + (f"{ours['client_s']:.3f} / {ours['server_s']:.3f} | " if ours else "| ")
            + (
                f"{fl['client_s']:.3f} / {fl['server_s']:.3f} |"
                if fl and "client_s" in fl
                else f"{fl.get('error') if fl else ''} |"
            )
        )
    return head + "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    series: dict = {}
    for r in rows:
        series.setdefault((r["params"], r["graph"], r["dropout"]), []).append(r)
    for (params, graph, dropout), rs in sorted(series.items()):
        rs = sorted(rs, key=lambda r: r["n"])
        ns = [r["n"] for r in rs]
        label = f"{params / 1e6:.2f}M, {graph}, {dropout:.0%} drop"
        style = "-" if graph == "secagg+" else "--"
        for ax, key in zip(axes, ("round_wall_s", "server_cpu_s", "peak_rss_mb"), strict=True):
            ax.plot(ns, [r[key] for r in rs], style, marker="o", label=label)
    for ax, title in zip(
        axes,
        ("fit phase wall time (s)", "server CPU per round (s)", "server peak RSS (MB)"),
        strict=True,
    ):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("sites n")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    ns = sorted({r["n"] for r in rows})
    if ns:
        ref = [r for r in rows if r["n"] == ns[0]]
        base = min(r["round_wall_s"] for r in ref)
        axes[0].plot(
            ns,
            [base * n * math.log2(n) / (ns[0] * math.log2(ns[0])) for n in ns],
            ":",
            color="grey",
            label="n log n (from the smallest)",
        )
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())

"""ε of a profile's DP recipes under both neighbouring relations, before any training.

    python -m bench.privacy_table --config configs/standard.toml

One row per DP method (its recipe applied) and site (``dpsgd``: each site's own accountant over
its planned steps) or per method (``ddp-sgd``: the server's accountant, with every site alive and
with only t sites). For a recipe given a ``target_epsilon`` it shows the σ calibrated for the
profile's relation (``dp.adjacency``, replace-one by default) and, for comparison, the σ the same
target gives under add/remove (what runs before issue 25 used) with its replace-one ε. Pure
accounting: a function of the profile and the planned site sizes; docs/dp.md quotes its output.
"""

from __future__ import annotations

import argparse

from common.config import Config, resolve_config, with_overrides
from common.methods import get_method
from common.training.dp.accountant import epsilons_of

RELATIONS = ("replace-one", "add-remove")


def _fmt(eps: dict) -> str:
    return " | ".join(f"{eps[r]:.2f}" for r in RELATIONS)


def dpsgd_rows(cfg: Config, method: str, sizes: dict[str, int]) -> list[str]:
    from common.training.dp import DPSettings, dp_steps_per_epoch, sample_rate_for

    mcfg, rows = cfg.for_method(method), []
    t, d = mcfg.train, mcfg.dp
    for site, n in sizes.items():
        q, steps = (
            sample_rate_for(n, t.batch_size),
            t.rounds * t.local_epochs * dp_steps_per_epoch(n, t.batch_size),
        )
        settings = DPSettings.from_config(d)
        sigma = settings.run_sigma(n, t.batch_size, t.rounds, t.local_epochs)
        row = f"| {method} | {site} ({n}) | {q:.3f} × {steps} | {sigma:.3f} | {_fmt(epsilons_of([(sigma, q, steps)], d.delta))} |"
        if d.target_epsilon is not None and d.adjacency != "add-remove":
            old = DPSettings.from_config(with_overrides(mcfg, **{"dp.adjacency": "add-remove"}).dp)
            s_old = old.run_sigma(n, t.batch_size, t.rounds, t.local_epochs)
            row += f" {s_old:.3f} | {_fmt(epsilons_of([(s_old, q, steps)], d.delta))} |"
        else:
            row += " | | |"
        rows.append(row)
    return rows


def ddp_rows(cfg: Config, method: str) -> list[str]:
    from common.model import count_parameters, model_for
    from common.training.ddp import plan_for
    from common.training.dp.skellam import epsilon_of

    mcfg = cfg.for_method(method)
    dim = count_parameters(model_for(mcfg, method))
    rows = []
    for adjacency in (mcfg.dp.adjacency, "add-remove"):
        plan = plan_for(with_overrides(mcfg, **{"dp.adjacency": adjacency}), dim)
        for k, label in ((5, "5 sites"), (plan.threshold, f"t = {plan.threshold} sites")):
            step = {
                "q": plan.q,
                "mu": k * plan.mu_share,
                "delta1": plan.delta1,
                "delta2": plan.delta2,
            }
            eps = {r: epsilon_of([step] * plan.rounds, plan.delta, r) for r in RELATIONS}
            rows.append(
                f"| {method} (μ for {adjacency}) | {label} | {plan.q:g} × {plan.rounds} | "
                f"{plan.noise_multiplier:.3f} | {_fmt(eps)} | | | |"
            )
        if adjacency == "add-remove" or mcfg.dp.target_epsilon is None:
            break
    return rows


def privacy_table(cfg: Config, methods=None) -> str:
    from bench.run import planned_manifest

    sizes = {r["site"]: int(r["n_train"]) for r in planned_manifest(cfg)["summary"]}
    head = (
        "| method | site (N) / survivors | q × steps | σ | ε replace-one | ε add/remove | σ "
        "for the target under add/remove | its ε replace-one | its ε add/remove |\n"
        "|---|---|---|---|---|---|---|---|---|"
    )
    rows = []
    for m in methods or cfg.fl.methods:
        spec = get_method(m)
        if not spec.dp:
            continue
        rows += ddp_rows(cfg, m) if spec.distributed_dp else dpsgd_rows(cfg, m, sizes)
    return f"δ = {cfg.dp.delta:g}, profile {cfg.profile}, seed {cfg.seed}\n\n{head}\n" + "\n".join(
        rows
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--config", default="configs/standard.toml")
    ap.add_argument(
        "--methods",
        help="comma-separated (default: the profile's DP methods and ddp-sgd, ddp-sgd-pt)",
    )
    args = ap.parse_args(argv)
    cfg = resolve_config(args.config, None, None)
    methods = (
        args.methods.split(",") if args.methods else [*cfg.fl.methods, "ddp-sgd-pt", "ddp-sgd"]
    )
    print(
        privacy_table(
            cfg, [m for m in dict.fromkeys(methods) if m in cfg.recipes or get_method(m).dp]
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""What a trap-weights server obtains (``attacks/trap.py``), per configuration, over seeds.

    python -m bench.trap --config configs/standard.toml --seeds 5 --out docs/runs/threats/trap

Each row is one round of a simulated federation of one tumour slice per site (the sites'
training code, ``common.fl.simulate``; the slice of each site drawn by the seed from its
training split) that starts from the crafted model: the server sends every site the same
crafted weights, each site trains by the row's orders, and the server estimates the victim's
(site A's) patches from what the row lets it hold. Scored against the true patches of each bin
(``attacks.trap.score``). Rows:

- no defence, FedSGD: one plain-SGD step on the slice, the victim's update in the clear (the
  setting trap weights are built for: the positive control, it must recover patches);
- the honest global model, same setting, the same estimator (the negative control: without
  the trap the estimates match nothing);
- secure aggregation: the same step, the server holds only the five sites' mean;
- five local steps: the victim's update after five SGD steps (momentum 0.9) on its slice;
- Adam: one step of the profile's optimizer;
- FedBN: the norm layers stay at the sites, so the server's scale and shift never reach them;
- a site that checks its model (``common.modelcheck``): it refuses the round, nothing leaves;
- a trap made to pass that check (every unit on >= 2% of a batch, kernels turned apart): the
  victim checks it, and where it passes, trains on it.

Deterministic on CPU for a seed; about a minute for five seeds of every row on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

FEDSGD = {
    "train.rounds": 1,
    "train.local_epochs": 1,
    "train.batch_size": 1,
    "train.optimizer": "sgd",
    "secagg.enabled": False,
}


@dataclass(frozen=True)
class Row:
    name: str
    method: str = "fedavg"
    overrides: dict = field(default_factory=dict)
    trap: bool = True  # False: the honest global model (the negative control)
    checked: bool = False  # the victim checks the model it is sent (common.modelcheck)
    dense: float = 0.0  # > 0: units fire on at least this share of a batch's positions
    cosine: float = 1.0  # < 1: each trap kernel at this cosine to a shared one


ROWS = (
    Row("no defence, FedSGD (positive control)"),
    Row("honest model, FedSGD (negative control)", trap=False),
    Row("secure aggregation (the five sites' mean)", overrides={"secagg.enabled": True}),
    Row("five local SGD steps", overrides={"train.local_epochs": 5}),
    Row("Adam, one step", overrides={"train.optimizer": "adam"}),
    Row("FedBN (norm layers stay at the sites)", method="fedbn"),
    Row("site checks the model it is sent", checked=True),
    # the attacker who evades the check: every unit fires on >= 2% of a batch (the rule is 1%,
    # and a site's slices differ from the public ones) and the kernels are 0.95 to a shared one
    # (0.985-0.987 to each other: the rule is 0.99)
    Row(
        "a trap made to pass the check (units on ≥ 2% of a batch, kernels 0.95 to one)",
        checked=True,
        dense=0.02,
        cosine=0.95,
    ),
)
CHECKED = {row.name for row in ROWS if row.checked}
VICTIM = 0  # the roster's first site


def _slices(cfg, data_dir: Path, seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """One tumour slice per site, drawn by ``seed`` from its training split (HU, mask)."""
    from common.data.loader import load_arrays

    rng = np.random.default_rng(seed)
    out = {}
    for entry in cfg.sites:
        images, masks, *_ = load_arrays(data_dir, "train", entry.name)
        tumour = np.flatnonzero(masks.reshape(len(masks), -1).any(axis=1))
        i = int(rng.choice(tumour)) if len(tumour) else 0
        out[entry.name] = (images[i : i + 1], masks[i : i + 1])
    return out


def run_row(cfg, row: Row, data_dir: Path, seed: int) -> dict:
    """One row at one seed: the score of the server's estimate and of the public guess
    (``attacks.trap``), or the site's refusal."""
    from attacks.shadows import dataset
    from attacks.trap import craft, public_guess, recover, score, true_bins
    from common.config import with_overrides
    from common.data.loader import load_arrays
    from common.fl.simulate import simulate_federation
    from common.model import get_params, model_for, norm_keys, set_params
    from common.modelcheck import ModelCheckError, check_model
    from common.training.pretrain import initial_model
    from common.transforms import to_inputs, window_hu

    window = tuple(cfg.data.window)
    mcfg = with_overrides(cfg.for_method(row.method), **{**FEDSGD, **row.overrides})
    slices = _slices(cfg, data_dir, seed)
    public, *_ = load_arrays(data_dir, "attacker")
    public = window_hu(public, window)
    honest = get_params(initial_model(mcfg, row.method))
    batch = mcfg.train.batch_size
    offset = int(np.ceil(row.dense * batch * cfg.data.image_size**2))
    crafted, trap = craft(honest, public, batch, seed, offset=offset, cosine=row.cosine)
    sent = crafted if row.trap else honest
    model = model_for(mcfg, row.method)
    if row.method == "fedbn":  # the site's own norm layers: the server never sets them
        sent = {**sent, **{k: honest[k] for k in norm_keys(model) if k in honest}}
    victim = cfg.sites[VICTIM].name
    if row.checked:  # the victim checks the model before training (as `fedonco client` does)
        set_params(model, sent)
        try:
            check_model(model, to_inputs(slices[victim][0], window))
        except ModelCheckError as err:
            return {"refused": str(err)}
        # it passed: the site trains on it
    sites = {s: dataset(img, mask, window) for s, (img, mask) in slices.items()}
    seen = []
    simulate_federation(mcfg, row.method, sites, seed=seed, observe=seen.append, initial=sent)
    view = seen[0]
    if mcfg.secagg.enabled:
        held = {n: np.asarray(v / view.total) for n, v in view.summed.items()}
        covers = sorted(slices)
    else:
        held, covers = view.uploads[victim], [victim]
    sent = {**sent, **view.sent}
    held = {**sent, **held}  # FedBN: the norm layers never come back
    pixels = len(covers) * cfg.data.image_size**2
    bins = true_bins(trap, [window_hu(slices[s][0], window) for s in covers])
    est = recover(trap, sent, held, mcfg.train.lr, pixels // len(covers))
    out = score(est, bins, pixels)
    out["public_guess"] = score(public_guess(trap, public, batch), bins, pixels)["recovered"]
    return out


def run_trap(cfg, data_dir: Path, seeds: list[int]) -> dict:
    from common.progress import progress

    out = {"seeds": seeds, "rows": {}}
    bar = progress(len(ROWS) * len(seeds), "trap weights", "row")
    for row in ROWS:
        out["rows"][row.name] = {str(s): run_row(cfg, row, data_dir, s) for s in seeds}
        bar.update(len(seeds))
    bar.close()
    return out


def honest_margins(cfg, data_dir: Path, methods: list[str]) -> dict:
    """How close honest models come to the site's check (``common.modelcheck``): for each
    method, a federation of the profile (every site's training split, the profile's recipe,
    ``cfg.seed``) whose every round's global model is run on every site's first training batch
    (with the site's own norm layers under FedBN: its previous upload's). The least firing fraction of
    a unit that fires (after BatchNorm; the check refuses below ``SPARSE_FRACTION``) and the
    largest kernel cosine of a layer (refused above ``MAX_COSINE``); and, after any norm layer
    (GroupNorm's included, which the check leaves out), the most units of one layer firing on
    more than 0 and fewer than ``SPARSE_FRACTION`` of the positions."""
    from attacks.shadows import dataset
    from common.data.loader import load_arrays
    from common.fl.simulate import simulate_federation
    from common.model import NORM_TYPES, get_params, model_for, set_params
    from common.modelcheck import SPARSE_FRACTION, firing, kernel_cosines
    from common.transforms import to_inputs

    window = tuple(cfg.data.window)
    sites, batches = {}, {}
    for entry in cfg.sites:
        images, masks, *_ = load_arrays(data_dir, "train", entry.name)
        sites[entry.name] = dataset(images, masks, window)
        batches[entry.name] = to_inputs(images[: cfg.train.batch_size], window)
    out = {}
    for method in methods:
        mcfg = cfg.for_method(method)
        start = get_params(model_for(mcfg, method))
        acc = {"least": [], "cosine": [], "sparse": [], "before": {}}

        def look(view, mcfg=mcfg, method=method, start=start, acc=acc):
            model = model_for(mcfg, method)
            for s, x in batches.items():  # the site's own norm layers: its last upload's
                set_params(model, {**start, **acc["before"].get(s, {}), **view.sent})
                acc["cosine"].append(max(kernel_cosines(model).values()))
                fired = [f[f > 0] for f in firing(model, x).values()]
                acc["least"].extend(float(f.min()) for f in fired if len(f))
                units = firing(model, x, after=NORM_TYPES).values()  # GroupNorm's too
                acc["sparse"].append(
                    max(int(((f > 0) & (f < SPARSE_FRACTION)).sum()) for f in units)
                )
            for s, up in view.uploads.items():  # its weights (SCAFFOLD's control variate aside)
                acc["before"][s] = {k: v for k, v in up.items() if k in start}

        simulate_federation(mcfg, method, sites, seed=cfg.seed, observe=look, desc=method)
        out[method] = {
            "rounds": mcfg.train.rounds,
            "least_firing": min(acc["least"]) if acc["least"] else None,
            "largest_cosine": max(acc["cosine"]),
            "most_sparse_units": max(acc["sparse"]),
        }
    return out


def _cell(runs: dict, key: str, fmt: str = "{:.1f}") -> str:
    values = [r[key] for r in runs.values() if r.get(key) is not None]
    if not values:
        return "–"
    return f"{fmt.format(np.mean(values))} ± {fmt.format(np.std(values, ddof=1) if len(values) > 1 else 0.0)}"


def markdown(result: dict) -> str:
    seeds = ", ".join(str(s) for s in result["seeds"])
    lines = [
        f"Trap weights (`attacks/trap.py`): one round from a crafted global model sent to every "
        f"site alike; the victim is site A (one tumour slice per site, drawn by the seed). Seeds "
        f"{seeds}; mean ± sd over seeds. A bin (the positions between two trap thresholds) is "
        f"recovered when it holds one position whose 3x3 patch is not flat (sd ≥ 0.1: no constant "
        f"guess comes within 20 dB of it) and the server's estimate matches that patch at ≥ 20 dB "
        f"(on the [0, 1] window); *public guess*: the same score for the mean public "
        f"patch of each bin (what the server knows without a view). Written by "
        f"`python -m bench.trap`.",
        "",
        "| configuration | bins holding a position | bins holding one non-flat patch | "
        "recovered bins | public guess | median PSNR of those patches (dB) | pixels recovered | "
        "the site |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, runs in result["rows"].items():
        refused = [r for r in runs.values() if "refused" in r]
        trained = {k: r for k, r in runs.items() if "refused" not in r}
        if not trained:
            lines.append(
                f"| {name} | – | – | 0 | – | – | 0 | refuses the round on "
                f"{len(refused)}/{len(runs)} seeds: {refused[0]['refused']} |"
            )
            continue
        site = "trains"
        if refused:
            site = f"refuses on {len(refused)}/{len(runs)} seeds (cells: the others), trains"
        elif name in CHECKED:
            site = "passes the check, trains"
        n_bins = next(iter(trained.values()))["bins"]
        lines.append(
            f"| {name} | {_cell(trained, 'bins_filled')} | {_cell(trained, 'bins_single_shaped')} | "
            f"{_cell(trained, 'recovered')} of {n_bins} | {_cell(trained, 'public_guess')} | "
            f"{_cell(trained, 'psnr_shaped_median')} | "
            f"{_cell(trained, 'pixel_fraction', '{:.4f}')} | {site} |"
        )
    honest = result.get("honest")
    if honest:
        from common.modelcheck import MAX_COSINE, SPARSE_FRACTION

        lines += [
            "",
            f"Honest models against the site's check (`common/modelcheck.py`: a unit after "
            f"BatchNorm firing on more than 0 and fewer than {SPARSE_FRACTION:.0%} of a batch's "
            f"positions, or two kernels of a layer at cosine > {MAX_COSINE}, refuse the round): "
            f"every round's global model of a federation of the profile (seed {result['honest_seed']}), "
            f"on every site's first training batch. GroupNorm models have no unit after "
            f"BatchNorm: only their kernels are checked.",
            "",
            "| method | rounds | least firing fraction of a firing unit after BatchNorm | "
            "largest kernel cosine | most units of one layer firing on > 0 and < 1% "
            "(after any norm layer) |",
            "|---|---|---|---|---|",
        ]
        for method, m in honest.items():
            least = "–" if m["least_firing"] is None else f"{m['least_firing']:.2%}"
            lines.append(
                f"| {method} | {m['rounds']} | {least} | {m['largest_cosine']:.3f} | "
                f"{m['most_sparse_units']} |"
            )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.trap",
        description="Measure what a trap-weights server obtains (attacks/trap.py), per "
        "configuration: no defence, secure aggregation, several local steps, Adam, FedBN, a "
        "site that checks its model; with the honest model as negative control.",
    )
    p.add_argument("--config", default="configs/standard.toml", help="the profile (its data)")
    p.add_argument("--seeds", type=int, default=5, help="how many seeds, from the profile's")
    p.add_argument("--data", type=Path, help="a built dataset of the profile (default: build one)")
    p.add_argument("--out", type=Path, required=True, help="directory for trap.json / trap.md")
    p.add_argument(
        "--honest",
        action="store_true",
        help="also train the profile's methods (fl.methods, minutes) and report how close "
        "their every-round models come to the site's check",
    )
    args = p.parse_args(argv)
    from common.config import load_config
    from common.data.build import build_dataset

    cfg = load_config(args.config)
    if args.seeds < 1:
        p.error("--seeds must be >= 1")
    seeds = [cfg.seed + i for i in range(args.seeds)]
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if data is None:
            data = Path(tmp) / "data"
            build_dataset(cfg, data, workers=1, gallery=False)
        result = run_trap(cfg, data, seeds)
        if args.honest:
            result["honest_seed"] = cfg.seed
            result["honest"] = honest_margins(cfg, data, list(cfg.fl.methods))
    from common.versions import collect_versions

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "trap.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "config.json").write_text(cfg.model_dump_json(indent=1) + "\n")
    (args.out / "versions.json").write_text(json.dumps(collect_versions(), indent=1) + "\n")
    md = markdown(result)
    (args.out / "trap.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())

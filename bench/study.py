"""The paper's experiments and open questions as one-command studies (issue 30).

    fedonco study heterogeneity --config configs/standard.toml --seeds 3 --out runs/studies
    fedonco study --report runs/studies/heterogeneity-standard-seed42   (the report again)

A study is a few *arms* (config overrides: the paper's stressed sites, a fraction of sites per
round, a DP-SGD noise multiplier or clipping norm) × the methods its question compares × seeds.
Each arm is one ordinary ``fedonco bench`` run (``bench.run.run_bench``: the real server, site
processes, the audit where the question needs leakage), in ``<study dir>/<arm>/``, on the local
engine or Ray (``--engine``). ``study.json`` keeps what the report needs from every arm's
results (Dice, per-site Dice, the strongest attack's AUC and CI, ε, the test-Dice curve per
round) so ``study.md``, its plots and its verdicts regenerate from that one file.

Verdicts compare arms or methods paired by seed (same data, same initial weights): the mean
difference with a 95% t-interval over the seeds; "not distinguishable" when it contains 0 (and
with one seed, which gives no interval). Studies:

- ``heterogeneity`` (experiment 3): FedAvg, FedProx, FedBN with the profile's sites and with the
  paper's stress (site A 90% large tumours, site B 90% small: ``data.stress = "paper"``); Dice
  and per-site Dice, no audit (the question is utility).
- ``participation`` (open question 4): FedAvg, per-site DP-SGD and distributed DP-SGD at 100%,
  80% and 60% of the five sites per round (``fl.fraction_fit``; 60% = 3 sites, the fewest secure
  aggregation at t = 3 admits), with the audit: Dice, per-site spread, leakage and ε. The DP
  methods are the recipes that learn on these profiles (public pretraining, then DP: ``dpsgd-pt``,
  ``ddp-sgd-pt``; the paper's from-scratch ``dpsgd`` stays at Dice 0 and would compare untrained
  models). Per-site DP-SGD: each site's own accountant counts only the rounds it trained in, so
  fewer rounds per site lower ε. Distributed DP: each site adds a noise share sized for the
  secure-aggregation threshold t (``mu / t``), so a round's summed noise is (sites in the round) x
  mu / t — more than the target when more than t sites take part — and the accountant counts the
  noise each round really carried: ε rises as participation falls to t.
- ``dp-grid`` (open question 1 / experiment 2): DP-SGD at σ ∈ {0.5, 1, 1.2, 1.5, 2} with C = 1
  and at C ∈ {0.1, 0.5, 1, 5} with σ = 1.2, in the DP recipe that learns here (``dpsgd-pt``:
  public pretraining, then DP fine-tuning; σ set directly, not from a target ε), with the audit: Dice against the
  strongest attack's AUC and against ε, and the operating point the benchmark recommends (among
  the cells whose every seed's AUC CI contains 0.5, no measured leakage, the lowest ε whose Dice
  is not distinguishable from the best such cell's; read on the test split, so it is a reading
  of this run, not a tuned setting).

- ``volumetric`` (open question 3): a 3D U-Net on synthetic volumes against the 2D U-Net on the
  same patients' slices (``bench/volumetric.py``; its own profile, configs/volumetric.toml):
  Dice per volume and patient-level leakage. Its federations run in process (the simulator of
  the real rounds), not through the gRPC engine.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Arm:
    name: str  # a directory name
    label: str  # what the report calls it
    overrides: dict = field(default_factory=dict)  # common.config.with_overrides keys


@dataclass(frozen=True)
class Study:
    name: str
    question: str
    methods: tuple[str, ...]
    arms: tuple[Arm, ...]
    audit: bool  # whether the question needs leakage (the audit is most of a cell's time)
    config: str = "configs/standard.toml"  # the profile it runs on unless --config says


# The grid's method: the paper's DP-SGD from scratch does not learn on the standard or the quick
# profile (Dice 0.000 on every seed at σ 1.2: docs/results.md; the participation study), so a grid
# of it would compare untrained models. Its σ is set directly: the arm's [dp] replaces the
# recipe's target ε (the recipe's [train], e.g. the standard profile's fine-tuning lr, is kept).
DP_GRID_METHOD = "dpsgd-pt"


def _dp_arm(name: str, label: str, sigma: float, clip: float) -> Arm:
    dp = {"noise_multiplier": sigma, "max_grad_norm": clip}
    return Arm(name, label, {f"recipes.{DP_GRID_METHOD}.dp": dp})


STUDIES = {
    s.name: s
    for s in (
        Study(
            "heterogeneity",
            "Experiment 3: under heterogeneity stress (site A 90% large tumours, site B 90% "
            "small), do FedProx and FedBN beat FedAvg, overall and at the stressed sites?",
            ("fedavg", "fedprox", "fedbn"),
            (
                Arm("profile", "the profile's sites", {"data.stress": "none"}),
                Arm("stress", "paper stress (A large, B small)", {"data.stress": "paper"}),
            ),
            audit=False,
        ),
        Study(
            "participation",
            "Open question 4: what do 80% and 60% of the sites per round cost in Dice, per-site "
            "spread and leakage, and what do they do to the ε of per-site and of distributed "
            "DP-SGD?",
            ("fedavg", "dpsgd-pt", "ddp-sgd-pt"),
            (
                Arm("all", "100% (5 of 5 sites per round)", {"fl.fraction_fit": 1.0}),
                Arm("frac80", "80% (4 of 5)", {"fl.fraction_fit": 0.8}),
                Arm("frac60", "60% (3 of 5)", {"fl.fraction_fit": 0.6}),
            ),
            audit=True,
        ),
        Study(
            "dp-grid",
            "Open question 1 / experiment 2: DP-SGD's noise multiplier σ and clipping norm C "
            "against Dice, the strongest attack's AUC and ε (the DP recipe that learns on these "
            "profiles, public pretraining then DP fine-tuning, with σ set directly instead of "
            "from a target ε).",
            (DP_GRID_METHOD,),
            tuple(
                _dp_arm(f"sigma{s:g}", f"σ = {s:g}, C = 1", s, 1.0)
                for s in (0.5, 1.0, 1.2, 1.5, 2.0)
            )
            + tuple(_dp_arm(f"clip{c:g}", f"σ = 1.2, C = {c:g}", 1.2, c) for c in (0.1, 0.5, 5.0)),
            audit=True,
        ),
        Study(
            "volumetric",
            "Open question 3: does a 3D U-Net on the volumes segment better than the 2D U-Net "
            "on the same patients' slices, and does it leak more or less about its patients?",
            ("fedavg",),
            (
                Arm("slices2d", "2D U-Net on the volumes' axial slices", {"model.dims": 2}),
                Arm("volumes3d", "3D U-Net on the volumes", {"model.dims": 3}),
            ),
            audit=True,
            config="configs/volumetric.toml",
        ),
    )
}


# -- running --------------------------------------------------------------------------------------


def arm_config(study: Study, arm: Arm, config: str, seed: int | None):
    """The resolved config of one arm: the profile, the study's methods, the arm's overrides."""
    from common.config import resolve_config, with_overrides

    cfg = resolve_config(config, None, seed)
    return with_overrides(
        cfg, **{"fl.methods": list(study.methods), "mia.enabled": study.audit, **arm.overrides}
    )


def run_study_cmd(args) -> int:
    """``fedonco study NAME``: every arm as a benchmark run, then study.json/md and plots;
    ``--report DIR``: the report again from DIR/study.json."""
    if args.report:
        out = Path(args.report)
        summary = json.loads((out / "study.json").read_text())
        print(write_report(summary, out), end="")
        return 0
    if args.name not in STUDIES:
        given = f"study {args.name!r}" if args.name else "no study named"
        raise ValueError(f"{given}: name one of {', '.join(STUDIES)} (or --report DIR)")
    from bench.options import BenchOptions
    from bench.run import run_bench

    study = STUDIES[args.name]
    config = args.config or study.config
    first = arm_config(study, study.arms[0], config, args.seed)
    out = Path(args.out) / f"{study.name}-{first.profile}-seed{first.seed}"
    if (out / "study.json").exists():
        raise ValueError(f"{out} already holds a study; --out elsewhere, or remove it")
    if study.name == "volumetric":
        return _run_volumetric(study, config, args, out)
    chosen = _chosen_arms(study, args.arms)
    rc = 0
    for i, arm in enumerate(study.arms, 1):
        cfg = arm_config(study, arm, config, args.seed)
        adir = out / arm.name
        text = json.dumps(cfg.model_dump(mode="json"), indent=1) + "\n"
        if _finished_arm(adir, text, args.seeds):
            log.info(
                "study %s: arm %d/%d: %s: ran before, kept",
                study.name,
                i,
                len(study.arms),
                arm.label,
            )
            continue
        if arm.name not in chosen:
            continue
        _set_aside(adir)
        log.info("study %s: arm %d/%d: %s", study.name, i, len(study.arms), arm.label)
        adir.mkdir(parents=True)
        path = adir / "config.json"
        path.write_text(text)
        opts = BenchOptions(
            config=str(path), seeds=args.seeds, out=str(adir), engine=args.engine, device=None
        )
        rc = max(rc, run_bench(opts))
    left = [a.name for a in study.arms if not _finished_arm(out / a.name, None, args.seeds)]
    if left:
        print(
            f"\n{out}: arms still to run: {', '.join(left)} (the same command runs them; "
            "the finished ones are kept); no study.json yet"
        )
        return rc or 0
    summary = collect(study, out)
    (out / "study.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(write_report(summary, out), end="")
    print(f"\nthe study: {out / 'study.md'} (and study.json, plots/)")
    return rc


def _chosen_arms(study: Study, arms: str | None) -> set[str]:
    """The arms ``--arms A,B`` names (all when None); an unknown name is refused."""
    names = [a.name for a in study.arms]
    if arms is None:
        return set(names)
    chosen = {a.strip() for a in arms.split(",") if a.strip()}
    unknown = sorted(chosen - set(names))
    if unknown or not chosen:
        raise ValueError(f"--arms {arms!r}: {study.name}'s arms are {', '.join(names)}")
    return chosen


def _finished_arm(adir: Path, config_text: str | None, seeds: int) -> bool:
    """Whether ``adir`` holds an arm an earlier invocation ran to the end: one benchmark run with
    its results for every seed. One of another config (``config_text``, when given) or another
    number of seeds is refused, not mixed into this study."""
    path = adir / "config.json"
    runs = [p for p in adir.iterdir() if p.is_dir()] if adir.is_dir() else []
    if len(runs) != 1 or not (runs[0] / "results.json").is_file() or not path.is_file():
        return False
    from bench.runfiles import load_run

    have = len(load_run(runs[0]).results)
    if config_text is not None and path.read_text() != config_text:
        raise ValueError(f"{adir} holds a finished arm of another config; --out elsewhere")
    if have != seeds:
        raise ValueError(f"{adir} holds a finished arm of {have} seed(s), not --seeds {seeds}")
    return True


def _set_aside(adir: Path) -> None:
    """An arm an earlier invocation did not finish: moved to ``<arm>.unfinished`` (replacing an
    older one), so that its run starts again and nothing of it is lost until the next time."""
    import shutil

    if adir.exists():
        aside = adir.with_name(adir.name + ".unfinished")
        shutil.rmtree(aside, ignore_errors=True)
        adir.rename(aside)
        log.warning("%s did not finish: moved to %s; the arm runs again", adir, aside)


def _run_volumetric(study: Study, config: str, args, out: Path) -> int:
    from bench.volumetric import run_volumetric
    from common.config import resolve_config

    if args.arms:
        raise ValueError("--arms: the volumetric study runs both its arms in one process")
    if args.engine != "local":
        raise ValueError(
            "the volumetric study runs its federations in process (bench/volumetric.py): "
            "--engine ray is not supported for it"
        )
    summary = run_volumetric(study, resolve_config(config, None, args.seed), args.seeds, out)
    print(write_report(summary, out), end="")
    print(f"\nthe study: {out / 'study.md'} (and study.json, plots/)")
    return 0


def _run_dir(arm_dir: Path) -> Path:
    runs = sorted(p for p in arm_dir.iterdir() if p.is_dir())
    if len(runs) != 1:
        raise ValueError(f"{arm_dir}: expected one benchmark run, found {len(runs)}")
    return runs[0]


def _curve(run: Path, seed: int, method: str, one_seed: bool) -> list[float]:
    base = run if one_seed else run / f"seed{seed}"
    path = base / method / "history.json"
    if not path.is_file():
        return []
    return [float(r["eval"]["overall"].get("dice") or 0.0) for r in json.loads(path.read_text())]


def cell_of(entry: dict) -> dict:
    """What the study keeps of one method's results.json entry."""
    mia = entry.get("mia") or {}
    return {
        "dice": entry.get("dice"),
        "dice_per_site": entry.get("dice_per_site"),
        "epsilon": entry.get("epsilon"),
        "auc": mia.get("auc"),
        "auc_ci95": mia.get("auc_ci95"),
        "tpr_at_1pct_fpr": mia.get("tpr_at_1pct_fpr"),
        "attack": mia.get("attack"),
    }


def collect(study: Study, out: Path) -> dict:
    """study.json: per arm, seed and method, what the report needs (from each arm's run)."""
    from bench.runfiles import load_run

    arms, profile = {}, None
    for arm in study.arms:
        run_dir = _run_dir(out / arm.name)
        run = load_run(run_dir)
        one = len(run.results) == 1 and (run_dir / "results.json").is_file()
        seeds = {}
        for seed, res in sorted(run.results.items()):
            seeds[str(seed)] = {
                m: {**cell_of(e), "curve": _curve(run_dir, seed, m, one)}
                for m, e in res["methods"].items()
            }
            sites = res.get("sites")
            profile = res.get("profile") or profile
        arms[arm.name] = {
            "label": arm.label,
            "overrides": arm.overrides,
            "wall_s": sum(float(r.get("wall_s") or 0.0) for r in run.results.values()),
            "seeds": seeds,
        }
    return {
        "study": study.name,
        "profile": profile,  # None from runs that do not record theirs: profile_of reads config.json
        "question": study.question,
        "methods": list(study.methods),
        "sites": sites,
        "arms": arms,
    }


# -- statistics -----------------------------------------------------------------------------------


def paired(a: list[float], b: list[float]) -> tuple[float, float | None]:
    """Mean of a - b (paired by seed) and the half-width of its 95% t-interval (None: 1 seed)."""
    from scipy.stats import t

    d = np.asarray(a, float) - np.asarray(b, float)
    if d.size < 2:
        return float(d.mean()), None
    return float(d.mean()), float(t.ppf(0.975, d.size - 1) * d.std(ddof=1) / math.sqrt(d.size))


def compare(a: list[float], b: list[float], what: str, than: str, unit: str = "") -> str:
    """One verdict line: 'what' is higher / lower than 'than' by ..., or not distinguishable."""
    mean, half = paired(a, b)
    if half is None:
        return f"{what} vs {than}: {mean:+.3f}{unit} (one seed: not distinguishable, no interval)"
    sure = abs(mean) > half
    word = ("higher" if mean > 0 else "lower") if sure else "not distinguishable"
    return (
        f"{what} vs {than}: {mean:+.3f}{unit} ± {half:.3f} (95% CI over {len(a)} seeds, paired): "
        f"{word}"
    )


def _values(summary: dict, arm: str, method: str, key: str) -> list[float]:
    """One value per seed of ``key`` of the cell; ``spread``: the sd of its per-site Dice."""
    out = []
    for cells in summary["arms"][arm]["seeds"].values():
        cell = cells.get(method) or {}
        if key == "spread":
            per = cell.get("dice_per_site") or []
            per = list(per.values()) if isinstance(per, dict) else per
            v = _sd([float(x) for x in per if x is not None]) if len(per) > 1 else None
        else:
            v = cell.get(key)
        out.append(float("nan") if v is None else float(v))
    return out


def _sd(v: list[float]) -> float:
    v = [x for x in v if not math.isnan(x)]
    return float(np.std(v, ddof=1)) if len(v) > 1 else 0.0


def _mean_sd(v: list[float]) -> str:
    v = [x for x in v if not math.isnan(x)]
    if not v:
        return "–"
    sd = f" ± {np.std(v, ddof=1):.3f}" if len(v) > 1 else ""
    return f"{np.mean(v):.3f}{sd}"


# -- verdicts -------------------------------------------------------------------------------------


UNTRAINED_DICE = 0.01  # below it on every seed: the model predicts (almost) nothing


def verdicts(summary: dict) -> list[str]:
    name, arms, methods = summary["study"], list(summary["arms"]), summary["methods"]
    lines = []
    if name == "heterogeneity":
        for arm in arms:
            for m in methods[1:]:
                lines.append(
                    f"{summary['arms'][arm]['label']}: "
                    + compare(
                        _values(summary, arm, m, "dice"),
                        _values(summary, arm, methods[0], "dice"),
                        f"{m} Dice",
                        methods[0],
                    )
                )
        stressed = arms[-1]
        for m in methods:
            lines.append(
                "stress vs profile: "
                + compare(
                    _values(summary, stressed, m, "dice"),
                    _values(summary, arms[0], m, "dice"),
                    f"{m} Dice",
                    "the profile's sites",
                )
            )
        for m in methods[1:]:
            lines.append(f"{summary['arms'][stressed]['label']}: {_per_site(summary, stressed, m)}")
    else:
        ref = arms[0]
        keys = [("dice", "Dice"), ("auc", "strongest-attack AUC"), ("epsilon", "ε")]
        if name == "participation":  # open question 4 asks about the spread over the sites too
            keys.insert(1, ("spread", "per-site Dice spread (sd over the sites)"))
        for arm in arms[1:]:
            for m in methods:
                for key, what in keys:
                    if all(math.isnan(x) for x in _values(summary, arm, m, key)):
                        continue
                    lines.append(
                        f"{summary['arms'][arm]['label']}: "
                        + compare(
                            _values(summary, arm, m, key),
                            _values(summary, ref, m, key),
                            f"{m} {what}",
                            summary["arms"][ref]["label"],
                        )
                    )
        if name == "dp-grid":
            lines.append(operating_point(summary))
    for arm, a in summary["arms"].items():  # a comparison with a model that never learnt
        for m in methods:
            dice = [x for x in _values(summary, arm, m, "dice") if not math.isnan(x)]
            if dice and max(dice) < UNTRAINED_DICE:
                lines.append(
                    f"caution: {a['label']}, {m}: Dice below {UNTRAINED_DICE} on every seed: the "
                    "model did not learn to segment in this budget; its comparisons measure an "
                    "untrained model, not the arm's design"
                )
    return lines


def _per_site(summary: dict, arm: str, method: str) -> str:
    """On how many sites ``method``'s per-site Dice (mean over seeds) beats the first method's."""
    base = summary["methods"][0]
    cells = summary["arms"][arm]["seeds"].values()
    mine = np.nanmean([c[method]["dice_per_site"] for c in cells], axis=0)
    theirs = np.nanmean([c[base]["dice_per_site"] for c in cells], axis=0)
    sites = summary.get("sites") or [str(i) for i in range(len(mine))]
    above = [s for s, a, b in zip(sites, mine, theirs, strict=True) if a > b]
    return (
        f"{method} above {base} on {len(above)} of {len(sites)} sites' mean Dice "
        f"({', '.join(above) or 'none'})"
    )


def operating_point(summary: dict) -> str:
    """The cell the benchmark recommends: among the cells none of whose seeds' AUC CI excludes
    0.5, the lowest ε whose Dice is not distinguishable (paired 95% CI over the seeds) from the
    best such cell's; the best cell itself when none is. Read on the test split, not tuned."""
    safe = []  # (mean Dice, arm, method, ε)
    for arm, a in summary["arms"].items():
        for m in summary["methods"]:
            cells = [c.get(m) or {} for c in a["seeds"].values()]
            cis = [c.get("auc_ci95") for c in cells]
            if not cis or any(ci is None or ci[0] > 0.5 for ci in cis):
                continue
            eps = max(c.get("epsilon") or math.inf for c in cells)
            safe.append((float(np.mean([c["dice"] for c in cells])), arm, m, eps))
    if not safe:
        return "operating point: every cell leaks measurably in some seed (AUC CI above 0.5)"
    best = max(safe, key=lambda c: c[0])

    def as_good(c: tuple) -> bool:
        mean, half = paired(
            _values(summary, c[1], c[2], "dice"), _values(summary, best[1], best[2], "dice")
        )
        return c is best or (half is not None and abs(mean) <= half)

    pick = min((c for c in safe if as_good(c)), key=lambda c: (c[3], -c[0]))
    label = summary["arms"][pick[1]]["label"]
    why = (
        "the best Dice among them"
        if pick is best
        else f"the lowest ε whose Dice is not distinguishable from the best such cell's "
        f"({summary['arms'][best[1]]['label']}, {best[0]:.3f})"
    )
    return (
        f"operating point: {label} ({pick[2]}): Dice {pick[0]:.3f}, ε {pick[3]:.2f}; no seed's "
        f"AUC CI above 0.5, {why} (read on the test split: a reading, not a tuned setting)"
    )


# -- the report -----------------------------------------------------------------------------------


def n_seeds(summary: dict) -> int:
    return max(len(a["seeds"]) for a in summary["arms"].values())


def table(summary: dict) -> list[str]:
    """The study's table: one row per arm and method, mean ± sd over the seeds."""
    arms, methods = summary["arms"], summary["methods"]
    lines = [
        "| arm | method | Dice | ε | strongest-attack AUC | TPR@1%FPR | wall (min) |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, a in arms.items():
        for m in methods:
            eps = [
                (c.get(m) or {}).get("epsilon")
                for c in a["seeds"].values()
                if (c.get(m) or {}).get("epsilon") is not None
            ]
            cells = [
                a["label"],
                m,
                _mean_sd(_values(summary, key, m, "dice")),
                f"{max(eps):.2f}" if eps else "–",
                _mean_sd(_values(summary, key, m, "auc")),
                _mean_sd(_values(summary, key, m, "tpr_at_1pct_fpr")),
                f"{a['wall_s'] / 60:.1f}",
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def profile_of(folder: Path, summary: dict) -> str:
    """The profile a committed study ran on: study.json's, else its (first arm's) config.json."""
    if summary.get("profile"):
        return summary["profile"]
    for path in (folder / "config.json", *sorted(folder.glob("*/config.json"))):
        if path.is_file():
            return json.loads(path.read_text()).get("profile", "?")
    return "?"


def docs_section(studies: list[tuple[str, dict]]) -> str:
    """The 'studies' block of docs/results.md: for each committed study (its directory relative
    to the repository root, its study.json) the question, the table, the verdicts, the wall time
    and where its plots are."""
    if not studies:
        return "No study is committed under `docs/runs/studies/` yet."
    lines = []
    for rel, summary in studies:
        wall = sum(float(a.get("wall_s") or 0.0) for a in summary["arms"].values())
        profile = profile_of(Path(rel), summary)
        link = rel.removeprefix("docs/")
        lines += [
            f"### `fedonco study {summary['study']}` ({profile} profile, "
            f"{n_seeds(summary)} seeds, {wall / 60:.0f} min of runs)",
            "",
            summary["question"],
            "",
            *table(summary),
            "",
            *[f"- {v}" for v in verdicts(summary)],
            "",
            f"Plots (training curves, Dice against the strongest attack, per-site Dice"
            f"{', Dice against ε' if _has_epsilon(summary) else ''}) and the "
            f"report: [`{rel}/study.md`]({link}/study.md).",
            "",
        ]
    return "\n".join(lines).rstrip("\n")


def write_report(summary: dict, out: Path) -> str:
    """study.md and plots/ in ``out``; returns the markdown."""
    lines = [
        f"# Study: {summary['study']}",
        "",
        summary["question"],
        "",
        f"Seeds per arm: {n_seeds(summary)}. Mean ± sd over the seeds; wall time per arm as the "
        "runs recorded it.",
        "",
        *table(summary),
    ]
    lines += ["", "## Verdicts", ""] + [f"- {v}" for v in verdicts(summary)]
    lines += [
        "",
        "![test Dice per round](plots/curves.png)",
        "",
        "![Dice against the strongest attack](plots/dice_vs_auc.png)",
        "",
        "![per-site Dice](plots/dice_per_site.png)",
        "",
    ]
    if _has_epsilon(summary):
        lines += ["![Dice against ε](plots/dice_vs_epsilon.png)", ""]
    text = "\n".join(lines)
    (out / "study.md").write_text(text)
    plot(summary, out / "plots")
    return text


def _has_epsilon(summary: dict) -> bool:
    """Whether any cell of the study reports an ε (a DP method's): it gets a Dice-vs-ε plot."""
    return any(
        math.isfinite(x)
        for key in summary["arms"]
        for m in summary["methods"]
        for x in _values(summary, key, m, "epsilon")
    )


def _scatter(plt, summary: dict, key: str, xlabel: str, path: Path) -> None:
    """Dice against ``key`` (the strongest attack's AUC, or ε), one point per arm and method:
    mean over the seeds with ± sd bars on both axes."""
    fig, ax = plt.subplots(figsize=(6, 4))
    seen = []
    for arm, a in summary["arms"].items():
        for m in summary["methods"]:
            d, x = _values(summary, arm, m, "dice"), _values(summary, arm, m, key)
            x = [v if math.isfinite(v) else math.nan for v in x]  # ε = inf: no DP, no point
            if all(math.isnan(v) for v in x):
                continue
            seen += [v for v in x if not math.isnan(v)]
            ax.errorbar(
                np.nanmean(x),
                np.nanmean(d),
                xerr=_sd(x),
                yerr=_sd(d),
                marker="o",
                capsize=3,
                label=f"{m}, {a['label']}",
            )
    if key == "auc":
        ax.axvline(0.5, color="gray", ls="--", lw=0.8)
        title = "utility against leakage"
    else:
        title = "utility against the privacy budget"
        if min(seen) > 0 and max(seen) / min(seen) > 10:  # a grid over decades of ε
            ax.set_xscale("log")
            xlabel += " (log scale)"
    ax.set(xlabel=xlabel, ylabel="Dice", title=title)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot(summary: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    arms, methods = summary["arms"], summary["methods"]
    fig, ax = plt.subplots(figsize=(7, 4))
    for a in arms.values():
        for m in methods:
            curves = [c[m]["curve"] for c in a["seeds"].values() if (c.get(m) or {}).get("curve")]
            if not curves:
                continue
            n = min(map(len, curves))
            mean = np.mean([c[:n] for c in curves], axis=0)
            ax.plot(range(1, n + 1), mean, marker=".", label=f"{m}, {a['label']}")
    ax.set(xlabel="round", ylabel="test Dice (mean over seeds)", title="training curves")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=110)
    plt.close(fig)

    _scatter(plt, summary, "auc", "strongest-attack AUC", out / "dice_vs_auc.png")
    if _has_epsilon(summary):
        _scatter(plt, summary, "epsilon", "ε", out / "dice_vs_epsilon.png")

    fig, ax = plt.subplots(figsize=(8, 4))
    bars = [
        (f"{m}, {a['label']}", np.nanmean([c[m]["dice_per_site"] for c in a["seeds"].values()], 0))
        for a in arms.values()
        for m in methods
    ]
    sites = summary.get("sites") or [str(i) for i in range(len(bars[0][1]))]
    w = 0.8 / len(bars)
    x = np.arange(len(sites))
    for i, (label, v) in enumerate(bars):
        ax.bar(x + i * w, v, w, label=label)
    ax.set_xticks(x + w * (len(bars) - 1) / 2, [f"site {s}" for s in sites])
    ax.set(ylabel="Dice (mean over seeds)", title="final test Dice per site", ylim=(0, 1))
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out / "dice_per_site.png", dpi=110)
    plt.close(fig)

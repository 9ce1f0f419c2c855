"""fedonco study (bench/study.py): the arms run as benchmark runs with their overrides, study.json
keeps what the report needs, and the verdicts follow paired 95% intervals over the seeds."""

import json
from pathlib import Path

import pytest

from bench import cli
from bench.study import (
    STUDIES,
    arm_config,
    collect,
    compare,
    docs_section,
    operating_point,
    paired,
    verdicts,
    write_report,
)

SITES = ["A", "B", "C", "D", "E"]


def _write_run(
    arm_dir, methods: dict[str, list[float]], seeds=(1, 2, 3), auc=None, eps=None, extra=None
):
    """A benchmark run's layout as run_bench writes it: seed<N>/results.json (with ``extra``'s
    keys) and each method's history.json (``methods``: method -> its Dice per seed)."""
    run = arm_dir / "smoke-seeds1-3-20260101-000000"
    for i, seed in enumerate(seeds):
        entries = {}
        for m, dice in methods.items():
            d = dice[i]
            (run / f"seed{seed}" / m).mkdir(parents=True)
            hist = [{"round": r, "eval": {"overall": {"dice": d * r / 2}}} for r in (1, 2)]
            (run / f"seed{seed}" / m / "history.json").write_text(json.dumps(hist))
            mia = (
                {"auc": auc[m][i], "auc_ci95": [auc[m][i] - 0.05, auc[m][i] + 0.05]} if auc else {}
            )
            entries[m] = {
                "dice": d,
                "dice_per_site": [d + 0.01 * k for k in range(5)],
                "epsilon": (eps or {}).get(m),
                "mia": mia,
            }
        (run / f"seed{seed}" / "results.json").write_text(
            json.dumps(
                {"seed": seed, "sites": SITES, "methods": entries, "wall_s": 60.0, **(extra or {})}
            )
        )
    if len(seeds) > 1:  # a finished several-seed run's summary (write_seed_summary)
        (run / "results.json").write_text("{}")


def test_paired_intervals_and_their_words():
    mean, half = paired([0.6, 0.62, 0.61], [0.5, 0.51, 0.5])
    assert mean == pytest.approx(0.1067, abs=1e-4) and 0 < half < mean
    assert compare([0.6, 0.62, 0.61], [0.5, 0.51, 0.5], "x", "y").endswith(": higher")
    assert compare([0.5, 0.51, 0.5], [0.6, 0.62, 0.61], "x", "y").endswith(": lower")
    assert compare([0.6, 0.4, 0.5], [0.5, 0.5, 0.5], "x", "y").endswith("not distinguishable")
    assert "one seed" in compare([0.6], [0.5], "x", "y")


def test_a_study_regenerates_from_its_json_with_the_effect_it_holds(tmp_path):
    study = STUDIES["heterogeneity"]
    _write_run(
        tmp_path / "profile",
        {"fedavg": [0.5, 0.52, 0.51], "fedprox": [0.5, 0.53, 0.5], "fedbn": [0.6, 0.63, 0.61]},
    )
    _write_run(
        tmp_path / "stress",
        {"fedavg": [0.4, 0.42, 0.41], "fedprox": [0.4, 0.41, 0.43], "fedbn": [0.3, 0.61, 0.45]},
    )
    summary = collect(study, tmp_path)
    assert summary["sites"] == SITES and list(summary["arms"]) == ["profile", "stress"]
    cell = summary["arms"]["profile"]["seeds"]["2"]["fedbn"]
    assert cell["dice"] == 0.63 and cell["curve"] == pytest.approx([0.315, 0.63])
    lines = verdicts(summary)
    assert "the profile's sites: fedbn Dice vs fedavg: +0.103" in lines[1]
    assert lines[1].endswith("higher")
    assert any(v.startswith("stress vs profile: fedavg") and v.endswith("lower") for v in lines)
    assert any("fedbn Dice vs fedavg" in v and "not distinguishable" in v for v in lines[2:4])
    text = write_report(json.loads(json.dumps(summary)), tmp_path)
    assert (tmp_path / "study.md").read_text() == text
    assert "| paper stress (A large, B small) | fedbn | 0.453 ± 0.155 | – | – | – | 3.0 |" in text
    for png in ("curves.png", "dice_vs_auc.png", "dice_per_site.png"):
        assert (tmp_path / "plots" / png).stat().st_size > 1000
    assert not (tmp_path / "plots" / "dice_vs_epsilon.png").exists()  # no DP method, no ε
    assert "dice_vs_epsilon" not in text
    (tmp_path / "study.json").write_text(json.dumps(summary))
    assert cli.main(["study", "--report", str(tmp_path)]) == 0
    assert (tmp_path / "study.md").read_text() == text


def test_docs_results_md_gets_each_committed_studys_table_verdicts_and_link(tmp_path):
    study = STUDIES["heterogeneity"]
    _write_run(tmp_path / "profile", {m: [0.5, 0.52, 0.51] for m in study.methods})
    _write_run(tmp_path / "stress", {m: [0.4, 0.41, 0.45] for m in study.methods})
    (tmp_path / "profile" / "config.json").write_text(json.dumps({"profile": "quick"}))
    summary = collect(study, tmp_path)
    text = docs_section([("docs/runs/studies/elsewhere", summary)])
    assert text.startswith("### `fedonco study heterogeneity` (? profile, 3 seeds, 6 min of runs)")
    assert "| paper stress (A large, B small) | fedbn | 0.420 ± 0.026 | – | – | – | 3.0 |" in text
    assert "- stress vs profile: fedavg Dice vs the profile's sites: -0.090" in text
    assert "[`docs/runs/studies/elsewhere/study.md`](runs/studies/elsewhere/study.md)" in text
    # the profile comes from study.json or, for a study of benchmark runs, an arm's config.json
    real = docs_section([(str(tmp_path), summary)])
    assert "(quick profile, 3 seeds" in real
    # a study collected from runs that record their profile (results.json) keeps it
    _write_run(
        tmp_path / "p2" / "profile",
        {m: [0.5] for m in study.methods},
        seeds=(1,),
        extra={"profile": "standard"},
    )
    _write_run(
        tmp_path / "p2" / "stress",
        {m: [0.4] for m in study.methods},
        seeds=(1,),
        extra={"profile": "standard"},
    )
    kept = collect(study, tmp_path / "p2")
    assert kept["profile"] == "standard" and summary["profile"] is None
    assert "(standard profile, 1 seed" in docs_section([("elsewhere", kept)])
    assert docs_section([]).startswith("No study is committed")


def test_the_operating_point_is_the_best_cell_without_measured_leakage(tmp_path):
    study = STUDIES["dp-grid"]
    for arm in study.arms:
        leaky = arm.name == "sigma0.5"  # the best Dice, but one seed's CI lies above 0.5
        dice = {"sigma0.5": 0.7, "sigma1": 0.6, "clip5": 0.65}.get(arm.name, 0.4)
        auc = [0.6, 0.5, 0.5] if leaky else [0.52, 0.5, 0.49]
        m = study.methods[0]
        _write_run(tmp_path / arm.name, {m: [dice] * 3}, auc={m: auc}, eps={m: 3.0})
    summary = collect(study, tmp_path)
    line = operating_point(summary)
    assert line.startswith("operating point: σ = 1.2, C = 5 (dpsgd-pt): Dice 0.650, ε 3.00")
    assert "the best Dice among them" in line
    assert "![Dice against ε](plots/dice_vs_epsilon.png)" in write_report(summary, tmp_path)
    assert (tmp_path / "plots" / "dice_vs_epsilon.png").stat().st_size > 1000


def test_the_operating_point_buys_the_lowest_epsilon_that_costs_no_measurable_dice(tmp_path):
    """As the quick profile's grid measured: Dice flat over σ. The recommended cell is the
    largest σ (lowest ε) whose Dice is not distinguishable from the best cell's, not the best
    cell's noisy maximum; a cell distinguishably worse is passed over even at a lower ε."""
    study = STUDIES["dp-grid"]
    m = study.methods[0]
    dice = {
        "sigma0.5": [0.50, 0.46, 0.52],  # the best mean
        "sigma1": [0.49, 0.47, 0.51],
        "sigma2": [0.48, 0.47, 0.50],  # within the paired CI of the best: chosen
        "clip0.1": [0.30, 0.31, 0.29],
    }
    eps = {"sigma0.5": 74.0, "sigma1": 25.0, "sigma2": 10.5, "clip0.1": 1.0}  # clip0.1: worse
    for arm in study.arms:
        d = dice.get(arm.name, [0.40, 0.41, 0.39])
        _write_run(
            tmp_path / arm.name,
            {m: d},
            auc={m: [0.51, 0.50, 0.49]},
            eps={m: eps.get(arm.name, 19.7)},
        )
    line = operating_point(collect(study, tmp_path))
    assert line.startswith("operating point: σ = 2, C = 1 (dpsgd-pt): Dice 0.483, ε 10.50"), line
    assert "not distinguishable from the best such cell's (σ = 0.5, C = 1, 0.493)" in line


@pytest.mark.parametrize("profile", ["configs/standard.toml", "configs/quick.toml"])
def test_dp_grid_arms_set_sigma_and_clip_of_the_dp_recipe_not_a_target_epsilon(profile):
    study = STUDIES["dp-grid"]
    base = arm_config(study, study.arms[0], profile, None)
    seen = set()
    for arm in study.arms:
        cfg = arm_config(study, arm, profile, None).for_method("dpsgd-pt")
        assert cfg.dp.target_epsilon is None
        seen.add((cfg.dp.noise_multiplier, cfg.dp.max_grad_norm))
        # the recipe's training (the standard profile's fine-tuning lr, rounds) is kept
        assert cfg.train == base.for_method("dpsgd-pt").train
    assert seen == {(s, 1.0) for s in (0.5, 1.0, 1.2, 1.5, 2.0)} | {
        (1.2, c) for c in (0.1, 0.5, 5.0)
    }
    if profile.endswith("standard.toml"):
        assert base.for_method("dpsgd-pt").train.lr == 0.0003


def test_overrides_create_a_missing_recipe_but_refuse_a_field_that_does_not_exist():
    from common.config import resolve_config, with_overrides

    cfg = resolve_config("configs/quick.toml", None, None)
    made = with_overrides(cfg, **{"recipes.dpsgd-pt.dp": {"noise_multiplier": 0.7}})
    assert made.for_method("dpsgd-pt").dp.noise_multiplier == 0.7
    with pytest.raises(ValueError):
        with_overrides(cfg, **{"trian.lr": 0.1})


def test_each_arm_is_a_benchmark_run_with_its_overrides(tmp_path, monkeypatch):
    import bench.run

    seen = []

    def fake_run_bench(opts):  # records what the study asks for, writes a run's layout
        cfg = json.loads(Path(opts.config).read_text())
        seen.append(
            (cfg["fl"]["fraction_fit"], cfg["fl"]["methods"], cfg["mia"]["enabled"], opts.seeds)
        )
        _write_run(Path(opts.out), {m: [0.5, 0.5] for m in cfg["fl"]["methods"]}, seeds=(7, 8))
        return 0

    monkeypatch.setattr(bench.run, "run_bench", fake_run_bench)
    args = ["study", "participation", "--config", "configs/smoke.toml", "--seeds", "2"]
    assert cli.main([*args, "--out", str(tmp_path)]) == 0
    assert seen == [(f, ["fedavg", "dpsgd-pt", "ddp-sgd-pt"], True, 2) for f in (1.0, 0.8, 0.6)]
    out = tmp_path / "participation-smoke-seed7"
    assert json.loads((out / "study.json").read_text())["arms"]["frac60"]["label"] == "60% (3 of 5)"
    assert cli.main([*args, "--out", str(tmp_path)]) == 2  # already holds a study: refused


def test_a_study_needs_a_known_name(capsys):
    assert cli.main(["study"]) == 2
    assert "no study named" in capsys.readouterr().err
    assert cli.main(["study", "volume"]) == 2
    assert "heterogeneity, participation, dp-grid, volumetric" in capsys.readouterr().err


def test_a_study_spread_over_invocations_keeps_finished_arms_and_reruns_an_unfinished_one(
    tmp_path, monkeypatch, capsys
):
    """--arms runs some arms now; a later invocation keeps them, moves an unfinished arm aside
    and runs it again, and writes study.json once every arm has finished. A finished arm of
    another number of seeds, or an unknown arm, is refused."""
    import bench.run

    study = STUDIES["participation"]
    ran = []

    def fake_bench(opts):
        arm = Path(opts.out).name
        ran.append(arm)
        _write_run(Path(opts.out), {m: [0.5, 0.52, 0.51] for m in study.methods})
        return 0

    monkeypatch.setattr(bench.run, "run_bench", fake_bench)
    base = ["study", "participation", "--config", "configs/smoke.toml", "--out", str(tmp_path)]
    assert cli.main([*base, "--arms", "frac80"]) == 0
    (out,) = tmp_path.glob("participation-smoke-seed*")
    assert ran == ["frac80"] and not (out / "study.json").exists()
    # an arm an interrupted invocation left behind: its config and a run without results
    (out / "all" / "smoke-seeds42-44-x").mkdir(parents=True)
    (out / "all" / "config.json").write_text("{}")
    assert cli.main(base) == 0
    assert ran == ["frac80", "all", "frac60"]
    assert (out / "all.unfinished" / "smoke-seeds42-44-x").is_dir()
    summary = json.loads((out / "study.json").read_text())
    assert list(summary["arms"]) == ["all", "frac80", "frac60"]
    assert cli.main([*base, "--out", str(tmp_path / "x"), "--arms", "half"]) == 2
    (out / "study.json").unlink()
    assert cli.main([*base, "--seeds", "2"]) == 2
    err = capsys.readouterr().err
    assert "participation's arms are all, frac80, frac60" in err
    assert "holds a finished arm of 3 seed(s), not --seeds 2" in err
    assert ran == ["frac80", "all", "frac60"]  # neither ran anything


def test_participation_verdicts_compare_dice_spread_leakage_and_epsilon_with_all_sites():
    """Open question 4's verdict lines: per arm and method against 100% of the sites, Dice, the
    sd of the per-site Dice, the strongest attack's AUC and ε (a method without ε: no ε line)."""

    def cell(dice, per_site, auc, eps):
        return {"dice": dice, "dice_per_site": per_site, "auc": auc, "epsilon": eps}

    def arm(label, spread, eps):
        seeds = {}
        for i, seed in enumerate(("1", "2", "3")):
            per = [0.5 - spread, 0.5, 0.5 + spread + 0.01 * i]
            seeds[seed] = {
                "fedavg": cell(0.5 + 0.01 * i, per, 0.6 + 0.01 * i, None),
                "dpsgd": cell(0.4 + 0.01 * i, per, 0.5, eps + 0.01 * i),
            }
        return {"label": label, "wall_s": 60.0, "seeds": seeds}

    summary = {
        "study": "participation",
        "methods": ["fedavg", "dpsgd"],
        "arms": {"all": arm("100%", 0.05, 4.0), "frac60": arm("60%", 0.2, 2.5)},
    }
    lines = verdicts(summary)
    spread = [v for v in lines if "per-site Dice spread" in v]
    assert len(spread) == 2 and all(v.endswith("higher") for v in spread), spread
    eps = [v for v in lines if " ε vs " in v]
    assert len(eps) == 1 and eps[0].startswith("60%: dpsgd ε vs 100%: -1.500")
    assert eps[0].endswith("lower")
    assert any(v.startswith("60%: fedavg Dice vs 100%: +0.000") for v in lines), lines
    assert not any(v.startswith("caution") for v in lines)
    # a cell whose model never learnt (Dice ~0 on every seed) is flagged, once
    for c in summary["arms"]["frac60"]["seeds"].values():
        c["dpsgd"]["dice"] = 0.0
    caution = [v for v in verdicts(summary) if v.startswith("caution")]
    assert caution == [
        "caution: 60%, dpsgd: Dice below 0.01 on every seed: the model did not learn to segment "
        "in this budget; its comparisons measure an untrained model, not the arm's design"
    ]

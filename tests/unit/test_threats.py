"""The "what each defence buys" table (bench/threats.py) from a run's per-seed results."""

from bench.threats import ROWS, isolation_counts, threats_table


def _results(seed, bb, wb):
    def mia(auc, wauc):
        return {
            "auc": auc,
            "auc_ci95": [auc - 0.05, auc + 0.05],
            "attack": "rmia",
            "whitebox": {
                "auc": wauc,
                "auc_ci95": [wauc - 0.05, wauc + 0.05],
                "attack": "wb_shadow",
            },
        }

    return {
        "seed": seed,
        "methods": {
            "groupnorm-pt": {"mia": mia(bb, wb), "epsilon": None, "dice": 0.5},
            "dpsgd-pt": {"mia": mia(0.5, 0.5), "epsilon": 4.0, "dice": 0.4},
        },
    }


def test_rows_read_their_release_and_the_lying_server_harness():
    table = threats_table({1: _results(1, 0.70, 0.80), 2: _results(2, 0.74, 0.84)}, 5, 3)
    rows = {r["configuration"]: r for r in table["rows"]}
    assert [r.name for r in ROWS] == list(rows)
    none, sa = rows["no defence"], rows["secure aggregation"]
    assert [a for a, _ci in none["black_box_aucs"]] == [0.70, 0.74]
    assert none["black_box"].startswith("0.720 ± 0.028") and "(rmia)" in none["black_box"]
    assert none["white_box"].startswith("0.820 ± 0.028") and "(wb_shadow)" in none["white_box"]
    assert sa["black_box"] == none["black_box"]  # secure aggregation releases the same model
    assert rows["per-site DP-SGD"]["epsilon"] == "4.00"
    assert rows["per-site DP-SGD"]["dice"] == "0.400 ± 0.000 (0.400, 0.400)"
    ddp = rows["distributed DP (needs secure aggregation)"]
    assert ddp["black_box"] == "not run (-)" and ddp["epsilon"] == "not run"
    assert rows["no defence, FedAvg (the profile's leaky recipe)"]["black_box"] == "not run (-)"
    # the real harness: key substitution wins without TLS, nothing wins under mutual TLS
    assert table["isolation"] == isolation_counts(5, 3) == {"honest": (1, 5), "pki": (0, 5)}
    assert sa["isolation_no_tls"] == "1/5 attacks" and sa["isolation_mtls"] == "0/5 attacks"
    assert none["isolation_no_tls"].startswith("always")
    assert "| no defence | groupnorm-pt |" in table["markdown"]


def test_the_inversion_column_reads_each_seeds_scores():
    scored = {
        "psnr_max": 9.0,
        "recovered_fraction": 0.0,
        "mask_dice_max": 0.1,
        "threshold_db": 20.0,
    }
    inversion = {
        1: {"no defence": scored},
        2: {"no defence": {**scored, "psnr_max": 11.0, "recovered_fraction": 1.0}},
    }
    table = threats_table({1: _results(1, 0.7, 0.8), 2: _results(2, 0.7, 0.8)}, 5, 3, inversion)
    rows = {r["configuration"]: r for r in table["rows"]}
    assert rows["no defence"]["inversion"] == (
        "PSNR 10.0 dB (max 11.0), recovered 0.50 (≥ 20 dB), mask Dice ≤ 0.10"
    )
    assert rows["secure aggregation"]["inversion"] == "not measured"


def test_views_hold_what_the_server_holds(tmp_path):
    """The smoke profile's round-1 FedSGD views: the victim's upload in the clear without secure
    aggregation, the sites' mean with it, the noisy gradient sum for distributed DP; each view
    is scored against the slices it covers."""
    from bench.threats import write_views
    from common.config import load_profile, with_overrides
    from common.data.build import build_dataset

    # the rows' -pt methods start from a public pretraining: a small one here
    cfg = with_overrides(load_profile("smoke"), **{"pretrain.public_size": 8, "pretrain.epochs": 1})
    data = tmp_path / "data"
    build_dataset(cfg, data, gallery=False, only_splits=["train"])
    views = write_views(cfg, data, tmp_path / "views", cfg.seed)
    kinds = {name: (v["kind"], len(v["covers"])) for name, v in views.items()}
    assert kinds == {
        "no defence, FedAvg (the profile's leaky recipe)": ("update", 1),
        "no defence": ("update", 1),
        "secure aggregation": ("mean", 5),
        "per-site DP-SGD": ("update", 1),
        "distributed DP (needs secure aggregation)": ("noisy-gradient-sum", 5),
        "secure aggregation + per-site DP-SGD": ("mean", 5),
    }
    import json

    import numpy as np

    from common.io import load_npz

    for v in views.values():
        d = v["dir"]
        assert json.loads((d / "view.json").read_text())["kind"] == v["kind"]
        sent, held = load_npz(d / "sent.npz"), load_npz(d / "held.npz")
        assert set(sent) >= set(held) and all(np.isfinite(a).all() for a in held.values())
    # one plain-SGD step of one slice moved the weights: the view is not the model it was sent
    d = views["no defence"]["dir"]
    sent, held = load_npz(d / "sent.npz"), load_npz(d / "held.npz")
    assert any(not np.array_equal(sent[k], held[k]) for k in held)


def test_methods_must_be_the_tables_own(capsys):
    from bench import cli

    for bad in ("fedprox", "fedavg,fedavg", ","):
        assert cli.main(["threats", "--methods", bad]) == 2
        assert "--methods" in capsys.readouterr().err


def test_a_release_measured_on_fewer_seeds_says_which():
    from bench.threats import _dice

    results = {42: {"methods": {"fedavg": {"dice": 0.5}}}, 43: {"methods": {}}}
    assert _dice(results, "fedavg") == "0.500 (0.500; seed 42 only)"
    assert _dice(results, "dpsgd-pt") == "not run"


def test_the_committed_table_is_what_the_command_writes(tmp_path):
    """docs/runs/threats/threats.md (docs/threat-model.md links it) comes from the committed
    results of the standard profile's three seeds (two runs: the -pt releases, FedAvg) by
    `fedonco threats --report ... --table ...`,
    never typed."""
    from pathlib import Path

    from bench import cli
    from bench.threats import seed_dirs

    root = Path(__file__).resolve().parents[2] / "docs" / "runs" / "threats"
    runs = [root / "standard-pt", root / "standard-fedavg"]  # the -pt rows, the FedAvg row
    assert all(sorted(seed_dirs(run)) == [42, 43, 44] for run in runs)
    argv = ["threats", "--report", *map(str, runs), "--table", str(tmp_path)]
    assert cli.main(argv) == 0
    assert "not run" not in (tmp_path / "threats.md").read_text()
    assert (tmp_path / "threats.md").read_text() == (root / "threats.md").read_text()


def test_no_invert_skips_the_inversion_and_still_writes_the_table(tmp_path, monkeypatch):
    """A run of further rows (--methods fedavg --no-invert) trains only its releases; the
    inversion, which does not depend on them, comes from the run --report joins it with."""
    import json
    import shutil
    from pathlib import Path

    import bench.run
    import bench.threats as threats
    from bench import cli

    committed = Path(__file__).resolve().parents[2] / "docs" / "runs" / "threats" / "standard-pt"
    calls = {"bench": [], "invert": []}

    def fake_bench(opts):  # the committed run stands in for a finished benchmark
        calls["bench"].append(json.loads(Path(opts.config).read_text())["fl"]["methods"])
        shutil.copytree(committed / "seed42", Path(opts.out) / "run" / "seed42")
        return 0

    monkeypatch.setattr(bench.run, "run_bench", fake_bench)
    monkeypatch.setattr(threats, "invert_missing", lambda runs, cfg: calls["invert"].append(runs))
    for flags, inverted in (([], 1), (["--no-invert"], 1)):  # calls so far
        out = tmp_path / str(len(flags))
        argv = ["threats", "--methods", "fedavg", "--out", str(out), *flags]
        assert cli.main(argv) == 0
        assert (out / "run" / "threats.md").is_file()
        assert len(calls["invert"]) == inverted
    assert calls["bench"] == [["fedavg"], ["fedavg"]]


def test_the_threats_profile_is_the_standard_one_with_a_narrower_unet():
    """`make threats`'s profile (configs/threats.toml) differs from the standard one only in the
    U-Net's width (and its name): the same sites, recipes, ε and audit."""
    from common.config import resolve_config

    std = resolve_config("configs/standard.toml", None, None).model_dump(mode="json")
    thr = resolve_config("configs/threats.toml", None, None).model_dump(mode="json")
    assert (thr.pop("profile"), std.pop("profile")) == ("threats", "standard")
    assert (thr["model"].pop("base"), std["model"].pop("base")) == (16, 24)
    assert thr == std

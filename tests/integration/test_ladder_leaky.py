"""The ladder is honest on a deliberately overfit target (configs/leaky.toml, issue 14).

One `fedonco bench` run of the leaky profile (real server, five sites, secure aggregation, the
release service and the attacker process), then the conditions that a sound membership-inference
audit must meet on a target that memorised its tiny sites:
- the strongest rung (chosen on shadow data) finds the leak: AUC >= 0.65 with its CI above 0.55
  (measured 0.845 on the machine of issue 14; 0.672 and 0.691 (RMIA, CI low 0.59 and 0.61) on a
  machine of another CPU type, where the shadow classifier reached 0.896 on the same target: the
  draws differ between CPU types, issue 26), and the best rung >= 0.85;
- at TPR@1%FPR the calibrated rungs (LiRA, RMIA) are at least as strong as the loss rung, and the
  loss rung at least as strong as the blind one;
- the blind rung (no queries) stays at chance: its CI covers 0.5;
- an independent implementation (ART) on the same features finds no materially more leakage.
"""

import json
import subprocess

import pytest
from conftest import SEED  # seed offset (bench/perf/margins.py reruns this with 0-4)

from bench.fleet import fedonco

pytestmark = [pytest.mark.slow, pytest.mark.heavy]


@pytest.fixture(scope="module")
def leaky_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("leaky")
    done = subprocess.run(fedonco("bench", "--config", "configs/leaky.toml", "--seed", str(11 + SEED),
                                  "--out", str(out)), capture_output=True, text=True, timeout=1100)  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    (run_dir,) = out.iterdir()
    return run_dir, json.loads((run_dir / "results.json").read_text())["methods"]["fedavg"]["mia"]


@pytest.mark.timeout(1200)
def test_strongest_rung_finds_the_leak_and_the_ladder_is_ordered(leaky_run, margin):
    _, mia = leaky_run
    attacks = mia["attacks"]
    assert mia["selected_on"].startswith("shadow AUC")  # two shadows: chosen on shadow data
    assert mia["attack"] in attacks, mia["selected_on"]
    margin("leaky_quoted_auc", mia["auc"], 0.65)
    margin("leaky_quoted_auc_ci_low", mia["auc_ci95"][0], 0.55)
    margin("leaky_best_rung_auc", max(v["auc"] for v in attacks.values()), 0.85)
    tpr = {k: v["tpr_at_1pct_fpr"] for k, v in attacks.items()}
    assert max(tpr["lira"], tpr["rmia"]) >= tpr["loss"] >= tpr["blind"], tpr
    lo, hi = attacks["blind"]["auc_ci95"]
    assert lo <= 0.5 <= hi
    for v in attacks.values():  # every TPR with its exact CI, threshold and false positives
        for point in (p for p in v["tpr"].values() if p is not None):
            assert point["tpr_ci95"][0] <= point["tpr"] <= point["tpr_ci95"][1]
            assert (
                point["fp"] <= point["k_allowed"] and point["n_nonmembers"] == mia["n_nonmembers"]
            )
    info = mia["attack_info"]["per_target"]["all"]["ladder"]
    assert info["views"] == ["id", "hflip", "right", "left"] and info["rmia_a_calibrated"]


@pytest.mark.timeout(1200)
def test_an_independent_implementation_finds_no_more(leaky_run):
    from bench.crosscheck import crosscheck

    run_dir, mia = leaky_run
    out = crosscheck(run_dir, "fedavg", n_boot=100)
    best_art = max(v["auc"] for v in out["art"].values())
    best_ours = max(v["auc"] for k, v in out["ours"].items() if k != "blind")
    assert best_art <= best_ours + 0.03, (out["art"], best_ours)

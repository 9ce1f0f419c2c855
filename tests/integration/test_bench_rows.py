"""`fedonco bench` with the reference rows and with a several-seed privacy frontier (smoke)."""

import json
import subprocess

import pytest

from bench.fleet import fedonco
from common.config import load_profile, with_overrides

pytestmark = [pytest.mark.slow, pytest.mark.heavy]


def _bench(tmp_path, cfg, *args):
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(cfg.model_dump(mode="json")))
    done = subprocess.run(
        fedonco("bench", "--config", str(path), "--out", str(tmp_path / "runs"), *args),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    (run_dir,) = (tmp_path / "runs").iterdir()
    return run_dir, done.stdout


def test_pooled_and_local_rows_are_trained_released_and_audited(tmp_path):
    cfg = with_overrides(load_profile("smoke"), **{"fl.methods": ["fedavg", "pooled", "local"]})
    run_dir, out = _bench(tmp_path, cfg)
    res = json.loads((run_dir / "results.json").read_text())
    pooled, local = res["methods"]["pooled"], res["methods"]["local"]
    assert pooled["kind"] == "pooled" and local["kind"] == "local"
    assert pooled["mia"]["attack_info"]["targets"] == ["all"]
    assert local["mia"]["attack_info"]["targets"] == list("ABCDE")  # each site's own model
    fedavg = res["methods"]["fedavg"]["mia"]
    assert local["mia"]["n_members"] == pooled["mia"]["n_members"] == fedavg["n_members"] > 0
    assert fedavg["n_members"] == fedavg["n_nonmembers"]  # the same candidates for every row
    assert set(local["dice_cross"]) == set("ABCDE") and local["dice_all_sites"] is not None
    assert any(c.startswith("What fedavg buys") for c in res["claims"])
    assert "reference row, trained in one process" in out


def test_frontier_sweeps_a_recipe_method_over_seeds_and_draws_the_plot(tmp_path):
    # 5 s heartbeats: DP rounds on 2 loaded cores can starve the 1 s heartbeat (4 s silence limit)
    # the sweep's mechanics, not learning: 2 local epochs instead of the smoke profile's 10 (the
    # test took 173 s of CI's heavy suite; sigma is calibrated for the steps either way)
    cfg = with_overrides(
        load_profile("smoke"),
        **{"mia.enabled": False, "fl.heartbeat_s": 5.0, "train.local_epochs": 2},
    )
    run_dir, _ = _bench(
        tmp_path, cfg, "--sweep", "target_epsilon=4,8", "--sweep-method", "dpsgd-pt", "--seeds", "2"
    )
    summary = json.loads((run_dir / "results.json").read_text())
    names = set(summary["methods"])
    assert names == {"groupnorm-pt", "dpsgd-pt-target_epsilon-4", "dpsgd-pt-target_epsilon-8"}
    for eps in (4, 8):
        s = summary["methods"][f"dpsgd-pt-target_epsilon-{eps}"]
        assert s["sweep"] == {"target_epsilon": eps, "method": "dpsgd-pt"}
        assert s["epsilon"]["n"] == 2 and s["epsilon"]["mean"] == pytest.approx(eps, rel=0.02)
    assert (run_dir / "plots" / "frontier.png").stat().st_size > 1000
    seed_run = json.loads((run_dir / f"seed{cfg.seed}" / "results.json").read_text())
    gn = seed_run["methods"]["groupnorm-pt"]
    assert (
        gn["initial_model_sha256"]
        == seed_run["methods"]["dpsgd-pt-target_epsilon-4"]["initial_model_sha256"]
    )  # both start from the same public pretraining

"""`fedonco bench --dry-run` on the paper profile: its shapes (256x256, the 1.23M-parameter U-Net,
secure aggregation, DP-SGD with per-sample gradients, the audit) end to end on CPU, one round on a
handful of slices per site (about 2 minutes on 2 cores)."""

import json
import subprocess

import pytest

from bench.fleet import fedonco

pytestmark = [pytest.mark.slow, pytest.mark.heavy]


def test_paper_profile_dry_run_runs_every_part(tmp_path):
    done = subprocess.run(
        fedonco(
            "bench",
            "--config",
            "configs/paper.toml",
            "--dry-run",
            "--methods",
            "dpsgd",
            "--out",
            str(tmp_path),
        ),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "DRY RUN" in done.stdout
    (run_dir,) = tmp_path.iterdir()
    config = json.loads((run_dir / "config.json").read_text())
    assert config["profile"] == "paper-dryrun" and config["data"]["image_size"] == 256
    assert config["train"]["rounds"] == 1 and config["secagg"]["enabled"]
    results = json.loads((run_dir / "results.json").read_text())["methods"]
    assert set(results) == {"dpsgd"}  # the method with the most parts: GroupNorm, DP, accountant
    for m in results.values():
        assert m["rounds"] == 1 and m["n_params"] == 1_230_373
        assert m["mia"]["auc"] is not None and 0 < m["mia"]["n_members"] <= 10
        assert m["mia"]["n_members"] == m["mia"]["n_nonmembers"]
    assert results["dpsgd"]["epsilon"] > 0

"""`fedonco bench --seeds N`: every method once per seed, each seed its own run, and mean ± sd."""

import json
import subprocess

import pytest

from bench.fleet import fedonco
from common.config import load_profile, with_overrides

pytestmark = pytest.mark.slow


def test_two_seeds_give_two_runs_and_a_summary(tmp_path):
    cfg = with_overrides(load_profile("smoke"), **{"mia.enabled": False, "fl.methods": ["fedavg"]})
    path = tmp_path / "smoke.json"
    path.write_text(json.dumps(cfg.model_dump(mode="json")))
    done = subprocess.run(fedonco("bench", "--config", str(path), "--seeds", "2", "--out", str(tmp_path / "runs")),
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    (run_dir,) = (tmp_path / "runs").iterdir()
    seeds = [cfg.seed, cfg.seed + 1]
    summary = json.loads((run_dir / "results.json").read_text())
    assert summary["seeds"] == seeds
    per_seed = {s: json.loads((run_dir / f"seed{s}" / "results.json").read_text()) for s in seeds}
    assert [per_seed[s]["seed"] for s in seeds] == seeds  # each seed is a run of its own
    hashes = {per_seed[s]["methods"]["fedavg"]["final_model_sha256"] for s in seeds}
    assert len(hashes) == 2
    dice = summary["methods"]["fedavg"]["dice"]
    assert dice["per_seed"] == {str(s): per_seed[s]["methods"]["fedavg"]["dice"] for s in seeds}
    assert dice["n"] == 2 and dice["sd"] is not None
    assert "±" in (run_dir / "results.md").read_text()

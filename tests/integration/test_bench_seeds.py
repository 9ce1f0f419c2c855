"""`fedonco bench --seeds N`: every method once per seed, each seed its own run, and mean ± sd."""

import json

import pytest

pytestmark = pytest.mark.slow


def test_two_seeds_give_two_runs_and_a_summary(local_two_seeds):
    cfg, _path, run_dir = local_two_seeds  # the session's local two-seed run (tests/conftest.py)
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

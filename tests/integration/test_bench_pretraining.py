"""`fedonco bench` of a pretrained method: the public check of the pretrained model is in the
run's results.json, and a recipe whose pretraining collapses on every attempt stops the run with
one line that says what to change (common/training/pretrain.py)."""

import json

import pytest
from benchrun import run_bench

from common.config import load_profile, with_overrides

pytestmark = pytest.mark.slow

SMALL = {  # a public pool this small pretrains in a second
    "mia.enabled": False,
    "fl.methods": ["groupnorm-pt"],
    "fl.heartbeat_s": 5.0,
    "pretrain.public_size": 32,
    "pretrain.epochs": 1,
    "pretrain.holdout_size": 16,
}


def _bench(tmp_path, **overrides):
    cfg = with_overrides(load_profile("smoke"), **SMALL, **overrides)
    return cfg, run_bench(tmp_path, cfg)


def test_the_public_check_of_the_pretrained_model_is_recorded(tmp_path):
    cfg, done = _bench(tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    (run_dir,) = (tmp_path / "runs").iterdir()
    record = json.loads((run_dir / "results.json").read_text())["methods"]["groupnorm-pt"]
    pre = record["pretraining"]
    assert pre["holdout_slices"] == 16 and pre["min_dice"] == 0.0
    (attempt,) = pre["attempts"]
    assert attempt["model_seed"] == cfg.seed and attempt["shuffle_seed"] == cfg.public_seed
    assert 0.0 <= attempt["public_holdout_dice"] <= 1.0


def test_pretraining_that_collapses_on_every_attempt_stops_the_run_in_one_line(tmp_path):
    _, done = _bench(tmp_path, **{"pretrain.min_dice": 1.0, "pretrain.attempts": 2})
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("fedonco bench: error: groupnorm-pt: public pretraining collapsed")
    assert "all 2 attempts" in last and "pretrain.epochs" in last
    assert "Traceback" not in done.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert not (run_dir / "groupnorm-pt" / "result.json").exists()  # no federation ran

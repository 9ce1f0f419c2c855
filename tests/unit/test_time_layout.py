"""bench/perf/time_layout.py: the profile copy without the audit, and a run read back with the
layout its versions.json records (a run of the other layout is refused, not mislabelled)."""

import json
from pathlib import Path

import pytest

from bench.perf.time_layout import summarise, without_audit
from common.config import resolve_config


def test_the_no_audit_copy_is_the_profile_with_the_audit_off(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    copy = without_audit(Path("configs/standard.toml"), src)
    cfg, base = (
        resolve_config(str(copy), None, None),
        resolve_config("configs/standard.toml", None, None),
    )
    assert base.mia.enabled and not cfg.mia.enabled
    assert cfg.model_dump(exclude={"mia"}) == base.model_dump(exclude={"mia"})
    assert cfg.mia.model_dump(exclude={"enabled"}) == base.mia.model_dump(exclude={"enabled"})
    plain = tmp_path / "plain.toml"  # a profile without a [mia] table gets one
    plain.write_text('profile = "x"\n')
    assert without_audit(plain, src).read_text().endswith("[mia]\nenabled = false\n")


def test_a_run_is_read_with_the_layout_it_recorded(tmp_path):
    run = tmp_path / "nchw" / "standard-seed42-x"
    run.mkdir(parents=True)
    timing = {"total": 10.0, "train": 8.0, "evaluate": 1.0}
    fedavg = {"timing_s": timing, "final_model_sha256": "ab" * 32}
    (run / "results.json").write_text(json.dumps({"wall_s": 12.5, "methods": {"fedavg": fedavg}}))
    (run / "versions.json").write_text(json.dumps({"layout": "nchw", "allocator": "keep"}))
    got = summarise(tmp_path / "nchw", "nchw")
    expected = {"total": 10.0, "train": 8.0, "final_model_sha256": "ab" * 32}
    assert got == {"run_wall_s": 12.5, "methods": {"fedavg": expected}}
    with pytest.raises(SystemExit, match="versions.json says layout 'nchw'"):
        summarise(tmp_path / "nchw", "channels_last")
    # --switch allocator reads the allocator the run recorded
    assert summarise(tmp_path / "nchw", "keep", "allocator")["methods"]["fedavg"] == expected
    with pytest.raises(SystemExit, match="versions.json says allocator 'keep'"):
        summarise(tmp_path / "nchw", "system", "allocator")

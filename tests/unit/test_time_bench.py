"""bench/perf/time_bench.py: where `make bench`'s wall time goes, from a run's own records."""

import json

import pytest

from bench.perf.time_bench import breakdown, markdown
from bench.results_doc import readme_bench


def _entry(train, audit, shadows, targets):
    return {
        "timing_s": {"total": train},
        "mia": {
            "attacker_wall_s": audit,
            "attack_info": {
                "shared_timing_s": {"shadow_train_s": shadows},
                "per_target": {
                    t: {
                        "ladder": {
                            "timing_s": {
                                "queries": 2.0,
                                "attacks": 10.0,
                                "rungs": {"map": 6.0, "shadow": 1.0},
                            }
                        }
                    }
                    for t in targets
                },
            },
        },
    }


def test_the_phases_add_up_to_the_runs_wall_time_and_split_every_target():
    results = {
        "wall_s": 1000.0,
        "methods": {
            "fedavg": _entry(100.0, 80.0, 50.0, ["all"]),
            "fedbn": _entry(90.0, 150.0, 60.0, list("ABCDE")),
        },
    }
    b = breakdown(results)
    ph = b["phases_s"]
    assert ph["training"] == 190.0 and ph["shadows"] == 110.0
    assert ph["queries"] == 2.0 * 6 and ph["rung map"] == 6.0 * 6 and ph["rung shadow"] == 6.0
    assert ph["rungs, shared work"] == pytest.approx(3.0 * 6)
    # fedavg: 80 - 50 - 2 - 10; fedbn: 150 - 60 - 5 * 2 - 5 * 10
    assert ph["other audit"] == pytest.approx(18.0 + 30.0)
    assert sum(ph.values()) == pytest.approx(1000.0)
    assert ph["rest (data, pretraining, reports)"] == pytest.approx(1000.0 - 190 - 230)
    assert b["methods"]["fedbn"]["targets"] == 5


def test_the_goal_line_and_the_readme_line_say_pass_or_fail(tmp_path):
    results = {"wall_s": 1500.0, "methods": {"fedavg": _entry(600.0, 500.0, 400.0, ["all"])}}
    record = {
        "breakdown": breakdown(results),
        "config": "configs/standard.toml",
        "seed": 42,
        "cores": 2,
        "cpu": "x",
        "goal_min": 20.0,
        "pass": False,
        "commit": "0" * 40,
        "date": "2026-12-03",
        "command": "python bench/perf/time_bench.py --out f.json",
    }
    assert "25.0 min" in markdown(record) and "FAIL" in markdown(record)
    path = tmp_path / "make-bench.json"
    assert "not measured yet" in readme_bench(path)
    path.write_text(json.dumps(record))
    line = readme_bench(path)
    assert "25.0 min (goal <= 20 min: FAIL)" in line and "training 10.0" in line
    assert "shadows 6.7" in line and "time_bench.py --out f.json" in line

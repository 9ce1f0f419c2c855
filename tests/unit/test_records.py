"""The run files' schema (common/records.py): what the server writes is what the readers parse, and
a file that does not fit is refused in one line naming the field."""

from __future__ import annotations

import json
import math

import pytest

from common.records import (
    RecordError,
    read_history,
    read_result,
    read_state,
    round_record,
    run_result,
    server_state,
    write_record,
)


def _round(rnd=1, **extra):
    site = {"loss": 0.5, "num_examples": 12.0, "device": "cpu", "clipped": 0}
    ev = {"dice": 0.4, "ce_loss": 0.2}
    return {
        "round": rnd,
        "selected": ["A", "B"],
        "failures": {},
        "fit": {"sites": {"A": site, "B": site}, "total_weight": 24.0},
        "eval": {
            "where": "server",
            "overall": ev,
            "per_site": {"A": ev, "B": ev},
            "dice_site_mean": float("nan"),
        },
        "timing_s": {"round": 1.5},
        "bytes_down_per_site": 1000,
        **extra,
    }


def _result(**extra):
    return {
        "method": "fedavg",
        "rounds": 2,
        "n_params": 10,
        "initial_model_sha256": "a" * 64,
        "final_model_sha256": "b" * 64,
        "evaluated_at": "server",
        "dice": 0.5,
        "dice_global": 0.5,
        "fp_rate_empty": 0.1,
        "ce_loss": 0.2,
        "dice_site_mean": None,
        "dice_per_site": {"A": 0.5, "B": None},
        "device": {"server": {"type": "cpu"}},
        "run_id": "fedavg-1",
        "status": "completed",
        "epsilon": None,
        **extra,
    }


def test_what_the_server_writes_reads_back_unchanged(tmp_path):
    rounds = [_round(1), _round(2, aborted="2 update(s) < min_fit_sites=3")]
    state = {
        "run_id": "r",
        "method": "fedavg",
        "round": 2,
        "history": [round_record(r).to_json() for r in rounds],
        "initial_model_sha256": "a" * 64,
        "skipped": [{"round": 3, "attempt": 1, "alive": ["A"], "reason": "1 live site(s)"}],
    }
    write_record(tmp_path / "state.json", server_state(state))
    back = read_state(tmp_path / "state.json")
    assert back.round == 2 and back.history[1].aborted and back.skipped[0].alive == ["A"]
    assert math.isnan(back.history[0].eval.dice_site_mean)  # NaN survives JSON
    assert back.history[0].fit.sites["A"]["device"] == "cpu"
    (tmp_path / "history.json").write_text(json.dumps(state["history"]))
    assert [r.round for r in read_history(tmp_path / "history.json")] == [1, 2]
    write_record(tmp_path / "result.json", run_result(_result()))
    res = read_result(tmp_path / "result.json")
    assert res.to_json() == _result() and res.kind is None  # only the fields given are written


@pytest.mark.parametrize(
    "what, data, fragment",
    [
        ("round", _round(0), "round: Input should be greater than or equal to 1"),
        ("round", {**_round(), "eval": {**_round()["eval"], "where": "moon"}}, "eval.where"),
        ("round", {**_round(), "surprise": 1}, "surprise: Extra inputs are not permitted"),
        ("round", {**_round(), "bytes_down_per_site": "1000"}, "bytes_down_per_site"),
        (
            "result",
            {k: v for k, v in _result().items() if k != "final_model_sha256"},
            "final_model",
        ),
        ("result", _result(dice="0.5"), "dice"),
        ("result", _result(rounds=True), "rounds"),  # a bool is not a count
    ],
)
def test_a_record_that_does_not_fit_is_refused_naming_the_field(tmp_path, what, data, fragment):
    path = tmp_path / "f.json"
    path.write_text(json.dumps([data] if what == "round" else data))
    read = read_history if what == "round" else read_result
    with pytest.raises(RecordError) as err:
        read(path)
    assert str(path) in str(err.value) and fragment in str(err.value)
    assert "\n" not in str(err.value)
    with pytest.raises(RecordError):  # and the writer refuses it before it is kept
        (round_record if what == "round" else run_result)(data)


def test_a_file_that_is_not_json_or_not_a_list_is_one_error(tmp_path):
    (tmp_path / "h.json").write_text("{")
    with pytest.raises(RecordError, match="not valid JSON"):
        read_history(tmp_path / "h.json")
    (tmp_path / "h.json").write_text("{}")
    with pytest.raises(RecordError, match="not a list of rounds"):
        read_history(tmp_path / "h.json")

"""bench/perf/perf_train.py: the DP-over-plain ratio (median of within-round ratios), a short
real run on this CPU, and a GPU asked for where there is none."""

import json

import pytest
import torch

from bench.perf import perf_train


def _row(kind: str, steps: list[float], threads: int = 2) -> dict:
    return {
        "size": "standard",
        "threads": threads,
        "kind": kind,
        "layout": "channels_last",
        "step_s": min(steps),
        "steps_s": steps,
    }


def test_the_dp_ratio_is_the_median_of_each_rounds_ratio():
    # round 2 is slow for both (a shared machine's drift): its ratio is still 1.5
    rows = [_row("plain-gn", [1.0, 4.0, 1.0]), _row("dp", [1.5, 6.0, 1.2]), _row("plain", [9.0])]
    (r,) = perf_train.dp_ratios(rows)
    assert r["dp_over_plain"] == pytest.approx(1.5)
    assert r["dp_over_plain_rounds"] == pytest.approx([1.5, 1.5, 1.2])
    assert r["best_over_best"] == pytest.approx(1.2)
    assert perf_train.dp_ratios([_row("dp", [1.0])]) == []  # no plain-gn row: no ratio


def test_a_short_run_writes_steps_ratios_and_the_allocator(tmp_path):
    out = tmp_path / "perf.json"
    argv = ["--threads", "1", "--kinds", "plain-gn", "dp", "--steps", "1", "--federation", "0"]
    threads = torch.get_num_threads()
    try:
        perf_train.main([*argv, "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    got = json.loads(out.read_text())
    assert {(r["kind"], r["layout"]) for r in got["steps"]} == {
        (k, lay) for k in ("plain-gn", "dp") for lay in ("nchw", "channels_last")
    }
    assert all(r["gflop"] > 1 and r["fraction_of_sgemm"] > 0 for r in got["steps"])
    assert {r["layout"] for r in got["dp_over_plain"]} == {"nchw", "channels_last"}
    assert all(r["dp_over_plain"] > 0 for r in got["dp_over_plain"])
    assert got["device"] == "cpu" and got["malloc"] in ("keep", "system")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_a_gpu_that_is_not_there_is_one_line():
    with pytest.raises(SystemExit, match="perf_train: device 'cuda' asked for"):
        perf_train.main(["--device", "cuda"])

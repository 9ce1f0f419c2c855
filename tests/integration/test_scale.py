"""The federation beyond five sites: the real server (``server.app.Server`` over a 70-site roster
and a 70-site dataset) and 70 lightweight sites (real gRPC, real secure-aggregation code, a seeded
perturbation of the global model instead of training) through bench/perf/perf_scale.py.

70 sites hold more long polls, pushes and heartbeats at once than the service's former fixed cap
of 64 concurrent calls (16 threads): sites were refused with RESOURCE_EXHAUSTED and the round
never completed. The cap and the thread pool are now sized by the number of sites."""

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from common.records import read_result
from server.campaign import federation_rpc_budget

ROOT = Path(__file__).resolve().parents[2]


def _perf_scale():
    spec = importlib.util.spec_from_file_location("perf_scale", ROOT / "bench/perf/perf_scale.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_replay_check_refuses_a_model_off_by_more_than_the_bound():
    """The benchmark's own correctness check: the expected model (initial + the mean of the
    survivors' perturbations each round) passes, one entry moved by twice the bound fails."""
    ps = _perf_scale()
    initial = {"a": np.zeros((3, 2), np.float32), "b": np.ones(4, np.float32)}
    sites = ["S001", "S002", "S003"]
    history = [
        SimpleNamespace(
            round=r,
            secagg={"survivors": survivors, "error_bound_sum": 1e-4},
            fit=SimpleNamespace(total_weight=ps.WEIGHT * len(survivors)),
        )
        for r, survivors in ((1, sites), (2, ["S001", "S003"]))
    ]
    final = {k: v.astype(np.float64) for k, v in initial.items()}
    for rec in history:
        for s in rec.secagg["survivors"]:
            for k, d in ps.perturbation(initial, rec.round, sites.index(s)).items():
                final[k] += d / len(rec.secagg["survivors"])
    final = {k: v.astype(np.float32) for k, v in final.items()}
    err, bound = ps.replay_error(initial, final, history, sites)
    assert err <= bound < 1e-5
    final["b"][2] += np.float32(2 * bound)
    assert ps.replay_error(initial, final, history, sites)[0] > bound
    # a site's perturbation is its own: another roster position gives another one
    assert not np.array_equal(
        ps.perturbation(initial, 1, 0)["a"], ps.perturbation(initial, 1, 1)["a"]
    )


@pytest.mark.slow
@pytest.mark.heavy
@pytest.mark.timeout(420)
def test_seventy_sites_secagg_plus_with_dropouts(tmp_path):
    ps = _perf_scale()
    assert federation_rpc_budget(70) > 3 * 70  # a long poll, a push and a heartbeat per site
    row = ps.one_federation(70, 4, "secagg+", 0.1, rounds=2, workers=2, tmp=tmp_path)
    assert row["params"] == 7477  # the U-Net of base 4
    assert row["k"] == 14 and row["threshold"] == 8  # k = 2*ceil(log2 70)
    for r in row["rounds"]:  # every round: 7 dropped after sharing keys, 63 unmasked
        assert (r["survivors"], r["dropped"]) == (63, 7)
        assert r["steps_s"]["unmask"] > 0
    # the server's final model is the replayed one within the quantisation bound (also checked
    # by the server process, which fails the row otherwise)
    assert 0 < row["max_err"] <= row["error_bound"]
    # the real server's run files: every roster site evaluated (one test slice each) each round
    result = read_result(tmp_path / "n70-b4-secagg+-d0.1.run" / "result.json")
    assert (result.status, result.rounds, result.evaluated_at) == ("completed", 2, "server")
    assert len(result.dice_per_site) == 70
    # a site uploads its masked vector (4 bytes per entry) plus keys and shares, once per round
    assert 4 * 7477 < row["bytes_up_per_site"] < 4 * 7477 + 20000
    assert row["bytes_down_per_site"] > 4 * 7477  # the global model (float32) came down

"""The federation beyond five sites: the real server and 70 lightweight sites (real gRPC, real
secure-aggregation code, random updates) through bench/perf/perf_scale.py's own harness.

70 sites hold more long polls, pushes and heartbeats at once than the service's former fixed cap
of 64 concurrent calls (16 threads): sites were refused with RESOURCE_EXHAUSTED and the round
never completed. The cap and the thread pool are now sized by the number of sites."""

import importlib.util
from pathlib import Path

import pytest

from server.campaign import federation_rpc_budget

ROOT = Path(__file__).resolve().parents[2]


def _perf_scale():
    spec = importlib.util.spec_from_file_location("perf_scale", ROOT / "bench/perf/perf_scale.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
@pytest.mark.heavy
@pytest.mark.timeout(300)
def test_seventy_sites_secagg_plus_with_dropouts(tmp_path):
    ps = _perf_scale()
    assert federation_rpc_budget(70) > 3 * 70  # a long poll, a push and a heartbeat per site
    row = ps.one_federation(70, 2000, "secagg+", 0.1, rounds=2, workers=2, tmp=tmp_path)
    assert row["k"] == 14 and row["threshold"] == 8  # k = 2*ceil(log2 70)
    for r in row["rounds"]:  # every round: 7 dropped after sharing keys, 63 unmasked
        assert (r["survivors"], r["dropped"]) == (63, 7)
        assert r["max_err"] <= r["error_bound"]  # the survivors' exact sum (checked by the server)
        assert r["steps_s"]["unmask"] > 0
    # a site uploads its masked vector (4 bytes per entry) plus keys and shares, once per round
    assert 8000 < row["bytes_up_per_site"] < 8000 + 20000
    assert row["bytes_down_per_site"] > 8000  # the global model (float32) came down

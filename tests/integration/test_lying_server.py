"""The malicious aggregator at process level: the project's real server, lying in one round
(``bench.lying_server.LyingServer``), against real `fedonco client` processes on 127.0.0.1.

What each attack obtains against the sites `fedonco client` runs (they refuse, or the sum the
server unmasks is noise), and the positive control: against sites whose masks are not bound to
the round they were sent (tests/integration/weakened_site.py), model-split reads the victim's
model off the sum. The in-process table of every attack and kind of site is
tests/unit/test_aggregator.py."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest
from conftest import wait_until

from bench.fleet import fedonco, spawn, stop
from bench.lying_server import LyingServer
from common.config import load_profile, with_overrides
from server.campaign import serve_campaign

pytestmark = pytest.mark.slow
WEAKENED = Path(__file__).with_name("weakened_site.py")


def _lie(tmp_path: Path, data: Path, lies: dict[int, str], weakened: bool = False):
    """Rounds of FedAvg through secure aggregation, lying in those of ``lies`` (round -> attack):
    the lying server in this process, five site processes; returns the server's outcome of each
    lie and the sites' logs."""
    cfg = with_overrides(
        load_profile("smoke"),
        **{"train.rounds": max(lies), "fl.heartbeat_s": 0.5, "fl.round_timeout_s": 60.0},
    )
    path = tmp_path / "config.json"
    path.write_text(cfg.model_dump_json())
    srv = LyingServer(cfg, "fedavg", data, tmp_path / "run", resume=False, lies=lies, victim="A")
    port_file, box = tmp_path / "port", {}
    server = threading.Thread(
        target=lambda: box.setdefault(
            "r", serve_campaign([lambda: srv], "127.0.0.1:0", port_file)[0]
        )
    )
    server.start()
    procs = []
    try:
        wait_until(port_file.exists, 60, "the server's port file")
        site = [sys.executable, str(WEAKENED)] if weakened else fedonco("client")
        for s in "ABCDE":
            args = ["--config", str(path), "--site", s, "--data", str(data)]
            args += ["--server", f"127.0.0.1:{port_file.read_text()}"]
            args += ["--state-dir", str(tmp_path / "state")]
            procs.append(spawn([*site, *args], tmp_path / f"site{s}.log"))
        server.join(timeout=180)
        assert not server.is_alive(), "the lying server's round did not end"
        for p in procs:
            p.wait(timeout=60)
    finally:
        stop(procs)
    logs = {s: (tmp_path / f"site{s}.log").read_text() for s in "ABCDE"}
    return srv.outcomes, logs


def test_a_lying_server_gets_nothing_from_the_sites_fedonco_client_runs(tmp_path, smoke_data):
    """Round 1, dropout-lie: every site refuses to confirm a survivor set of two and says so;
    no share leaves any site, the round aborts. Round 2, model-split: the victim sees none of
    its peers' confirmations verify (they were sent another round) and declines to unmask; its
    peers unmask, and the sum carries pairwise masks that do not cancel: noise, not a model.
    Round 3, trap: every site is sent a model with trap weights and declines the fit task
    before training on it (common/modelcheck.py); nothing is uploaded, the round aborts."""
    outs, logs = _lie(tmp_path, smoke_data, {1: "dropout-lie", 2: "model-split", 3: "trap"})
    lie = outs[1]
    assert lie.aborted and not lie.isolated
    assert not any(lie.revealed.values()), lie.revealed  # no share left any site
    for s in "ABCDE":
        why = lie.failures.get(s, "")
        assert why.startswith("declined: refused the consistency stage"), (s, why)
        assert "Traceback" not in logs[s]
    split = outs[2]
    assert not split.isolated
    why = split.failures.get("A", "")
    assert why.startswith("declined: refused the unmask stage"), why
    assert split.revealed and "A" not in split.revealed
    if split.max_change is not None:  # unmasked: uniform noise over the quantisation ring
        assert split.max_change > 100.0, split.max_change
    trap = outs[3]
    assert trap.aborted and not trap.revealed
    for s in "ABCDE":
        why = trap.failures.get(s, "")
        assert why.startswith("declined: the model looks crafted"), (s, why)
        assert "trap weights" in logs[s] and "Traceback" not in logs[s]


def test_positive_control_model_split_reads_the_victims_model_off_weakened_sites(
    tmp_path, smoke_data
):
    """Sites whose masks are not bound to the round they were sent: the server reads the
    victim's model off the sum (within 1 of what it was sent: one round of training)."""
    outs, _logs = _lie(tmp_path, smoke_data, {1: "model-split"}, weakened=True)
    out = outs[1]
    assert not out.aborted and out.isolated, out
    assert 0.0 < out.max_change < 1.0

"""Long work reports progress: a bar on a terminal, plain log lines in a file (issue 26)."""

import io
import logging
import sys

from tqdm import tqdm

from bench.fleet import run_relaying
from common.progress import LogProgress, progress


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_a_bar_and_a_file_gets_whole_log_lines(caplog):
    with progress(3, "fedavg", "round", stream=_Tty()) as bar:
        assert isinstance(bar, tqdm)
    caplog.set_level(logging.INFO, logger="fedonco.progress")
    piped = io.StringIO()
    with progress(3, "fedavg  ", "round", stream=piped, every_s=3600) as bar:
        assert isinstance(bar, LogProgress)
        for _ in range(3):
            bar.set_postfix(dice="0.500")
            bar.update(1)
    lines = [r.getMessage() for r in caplog.records]
    # the first step, then (every_s not yet passed) only the last: no carriage returns
    assert len(lines) == 2 and "\r" not in piped.getvalue() + "".join(lines)
    assert lines[0].startswith("fedavg: 1/3 rounds (33%), ") and lines[0].endswith("dice=0.500")
    assert lines[1].startswith("fedavg: 3/3 rounds (100%), ")


def test_a_bar_closed_early_says_where_it_stopped(caplog):
    caplog.set_level(logging.INFO, logger="fedonco.progress")
    bar = LogProgress(10, "shadows", "shadow", every_s=3600)
    bar.update(1)
    bar.update(1)
    bar.close()
    bar.close()
    assert [r.getMessage().split(",")[0] for r in caplog.records] == [
        "shadows: 1/10 shadows (10%)",
        "shadows: 2/10 shadows (20%)",
    ]


def test_the_attackers_phase_lines_are_relayed_while_it_runs(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="fedonco.progress")
    script = (
        "import sys, time\n"
        "print('2026-12-03 10:00:00,000 INFO attacks.shadows: shadow federation 1/2: training', flush=True)\n"
        "print('noise that is not relayed', flush=True)\n"
        "print('2026-12-03 10:00:00,500 INFO attacks.remote: connecting to 127.0.0.1:1', flush=True)\n"
        "print('2026-12-03 10:00:00,600 INFO fedonco.progress: shadow federation 1/2 (fedavg): "
        "3/10 rounds (30%), 41s', flush=True)\n"
        "time.sleep(0.3)\n"
        "print('2026-12-03 10:00:01,000 INFO attacks.cli: 1 target(s) attacked in 1.0s', flush=True)\n"
        "sys.exit(3)\n"
    )
    rc = run_relaying(
        [sys.executable, "-c", script], tmp_path / "a.log", "audit of fedavg", poll_s=0.05
    )
    assert rc == 3
    assert [r.getMessage() for r in caplog.records] == [
        "audit of fedavg: shadow federation 1/2: training",
        "audit of fedavg: shadow federation 1/2 (fedavg): 3/10 rounds (30%), 41s",
        "audit of fedavg: 1 target(s) attacked in 1.0s",
    ]
    assert "noise that is not relayed" in (tmp_path / "a.log").read_text()
    assert "connecting" in (tmp_path / "a.log").read_text()  # in the log, not repeated


def test_a_log_line_estimates_the_time_left_at_the_pace_so_far(caplog, monkeypatch):
    import common.progress

    now = [100.0]
    monkeypatch.setattr(common.progress.time, "monotonic", lambda: now[0])
    caplog.set_level(logging.INFO, logger="fedonco.progress")
    bar = LogProgress(6, "bench", "cell", initial=2, every_s=0.0)  # resumed: 2 done before
    now[0] = 160.0
    bar.update(1)  # one cell of this run in 60 s: 3 left, ~180 s
    now[0] = 220.0
    bar.update(3)  # all done: no estimate
    assert [r.getMessage() for r in caplog.records] == [
        "bench: 3/6 cells (50%), 60s, ~180s left",
        "bench: 6/6 cells (100%), 120s",
    ]

"""The server's round state: who gets which task, and which results are refused (no network)."""

import threading
import time

import pytest

from server.state import Rejected, RoundState


def _state(hb=5.0):
    st = RoundState("run-1", ["A", "B", "C"], heartbeat_s=hb)
    for s in "ABC":
        st.register(s)
    return st


def _open(st, rnd=1, sites="AB", timeout=5.0):
    """Run a fit phase in a thread; returns (thread, box with results)."""
    box = {}

    def run():
        box["out"] = st.run_phase(
            "fit", rnd, {s: {"seed": 1} for s in sites}, "payload", {"w": 1}, timeout
        )

    t = threading.Thread(target=run)
    t.start()
    deadline = time.monotonic() + 5
    while st.next_task(sites[0], "run-1", 0.0).kind != "fit":
        assert time.monotonic() < deadline
    return t, box


def _ok(spec):
    return ("update", spec)


def test_tasks_go_to_selected_sites_only():
    st = _state()
    t, box = _open(st)
    assert st.next_task("A", "run-1", 0.0).kind == "fit"
    assert st.next_task("C", "run-1", 0.0).kind == "wait"
    st.submit("fit", "A", "run-1", 1, _ok)
    assert st.next_task("A", "run-1", 0.0).kind == "wait"  # done with this round
    st.submit("fit", "B", "run-1", 1, _ok)
    t.join()
    results, failures = box["out"]
    assert set(results) == {"A", "B"} and failures == {}
    assert results["A"] == ("update", {"w": 1})  # decoded against the phase's spec


@pytest.mark.parametrize(
    ("site", "run", "rnd", "kind"),
    [
        ("Z", "run-1", 1, "not_found"),
        ("A", "other-run", 1, "not_found"),
        ("A", "run-1", 0, "failed_precondition"),  # stale
        ("A", "run-1", 2, "failed_precondition"),  # future
        ("C", "run-1", 1, "failed_precondition"),  # not selected
    ],
)
def test_rejections(site, run, rnd, kind):
    st = _state()
    t, box = _open(st)
    with pytest.raises(Rejected) as err:
        st.submit("fit", site, run, rnd, _ok)
    assert err.value.kind == kind
    assert st.rejections and st.rejections[-1]["kind"] == kind
    st.submit("fit", "A", "run-1", 1, _ok)
    st.submit("fit", "B", "run-1", 1, _ok)
    t.join()
    assert set(box["out"][0]) == {"A", "B"}


def test_duplicate_and_undecodable_updates_change_nothing():
    st = _state()
    t, box = _open(st)
    st.submit("fit", "A", "run-1", 1, lambda spec: "first")
    with pytest.raises(Rejected) as err:
        st.submit("fit", "A", "run-1", 1, lambda spec: "second")
    assert err.value.kind == "already_exists"

    def bad(spec):
        raise ValueError("tensor 'w' contains NaN")

    with pytest.raises(Rejected) as err:
        st.submit("fit", "B", "run-1", 1, bad)
    assert err.value.kind == "invalid_argument" and "NaN" in str(err.value)
    st.submit("fit", "B", "run-1", 1, lambda spec: "b")
    t.join()
    assert box["out"][0] == {"A": "first", "B": "b"}


def test_slow_site_is_left_out_at_the_deadline():
    st = _state()
    t, box = _open(st, timeout=0.6)
    st.submit("fit", "A", "run-1", 1, _ok)
    t.join(timeout=5)
    results, failures = box["out"]
    assert set(results) == {"A"} and "B" in failures
    with pytest.raises(Rejected) as err:  # too late: the round has moved on
        st.submit("fit", "B", "run-1", 1, _ok)
    assert err.value.kind == "failed_precondition"


def test_silent_site_is_left_out_before_the_deadline():
    st = RoundState("run-1", ["A", "B"], heartbeat_s=0.1)
    st.register("A")
    st.register("B")
    box = {}
    t = threading.Thread(
        target=lambda: box.setdefault(
            "out", st.run_phase("fit", 1, {"A": {}, "B": {}}, None, None, 30.0)
        )
    )
    t.start()
    t0 = time.monotonic()
    while time.monotonic() - t0 < 2.5:  # A keeps polling; B fell silent
        st.next_task("A", "run-1", 0.05)
    st.submit("fit", "A", "run-1", 1, _ok)
    t.join(timeout=5)
    assert not t.is_alive() and time.monotonic() - t0 < 10
    assert "silent" in box["out"][1]["B"]


def test_finished_run_says_so():
    st = _state()
    st.finish(3)
    task = st.next_task("A", "run-1", 0.0)
    assert task.kind == "finished" and task.round == 3
    assert st.heartbeat("A", "run-1") is False

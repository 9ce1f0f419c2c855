"""common/logthrottle.py: refusals of what strangers send cannot grow the log without bound."""

from __future__ import annotations

import logging

import pytest

from common.logthrottle import Throttle


def _logger(name, flt, caplog):
    log = logging.getLogger(name)
    log.addFilter(flt)
    caplog.set_level(logging.INFO, logger=name)
    return log


def test_a_template_passes_a_burst_per_window_and_counts_the_rest(caplog):
    now = [0.0]
    log = _logger(
        "test.throttle.burst", Throttle(burst=3, window_s=60, clock=lambda: now[0]), caplog
    )
    for i in range(1000):  # a stranger's flood: 1000 refusals within the window
        log.warning("rejected %s from site %r", "not_found", f"Z{i}")
    log.info("another template %d", 1)  # its own budget
    assert [r.getMessage() for r in caplog.records] == [
        "rejected not_found from site 'Z0'",
        "rejected not_found from site 'Z1'",
        "rejected not_found from site 'Z2'",
        "another template 1",
    ]
    now[0] = 61.0  # the next window: the first line says how many were dropped
    log.warning("rejected %s from site %r", "not_found", "Y")
    assert caplog.records[-1].getMessage() == (
        "rejected not_found from site 'Y' (997 similar line(s) dropped before this one)"
    )


def test_tracebacks_off_keeps_one_line_with_the_error(caplog):
    log = _logger("test.throttle.tb", Throttle(tracebacks=False), caplog)
    try:
        raise ValueError("Error parsing message with type 'fedonco.v1.PredictRequest'")
    except ValueError:
        log.exception("Exception deserializing request!")
    (record,) = caplog.records
    assert record.exc_info is None and "Traceback" not in caplog.text
    assert record.getMessage() == (
        "Exception deserializing request!: ValueError: Error parsing message with type "
        "'fedonco.v1.PredictRequest'"
    )


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        Throttle(burst=0)


def test_every_grpc_server_bounds_grpcs_own_deserialisation_tracebacks():
    from common.wire.channel import create_server

    server, _ = create_server("127.0.0.1:0", [])
    server.stop(None)
    for name in ("grpc._common", "grpc._server"):  # _common logs the undecodable request
        flt = [f for f in logging.getLogger(name).filters if isinstance(f, Throttle)]
        assert len(flt) == 1 and not flt[0].tracebacks

"""Logs: JSON lines by default, readable with DEBUG, every MES line tagged ``mes``,
module-level loggers following a configuration made after import."""

from __future__ import annotations

import json
import logging

import structlog

from mes.log import configure_logging, get_logger

EARLY = get_logger("mes.test.early")  # made at import, before anything is configured


def test_json_lines_tagged_mes_with_bound_ids(capsys):
    configure_logging(debug=False)
    structlog.contextvars.bind_contextvars(batch_id="b-1")
    try:
        EARLY.info("batch_written", rows=3)
        logging.getLogger("rq.worker").info("from the standard library")
    finally:
        structlog.contextvars.unbind_contextvars("batch_id")
    lines = [json.loads(li) for li in capsys.readouterr().err.splitlines()]
    ours = next(li for li in lines if li["event"] == "batch_written")
    assert ours["mes"] is True and ours["logger"] == "mes.test.early" and ours["batch_id"] == "b-1"
    assert ours["rows"] == 3 and ours["level"] == "info" and "timestamp" in ours
    theirs = next(li for li in lines if li["event"] == "from the standard library")
    assert theirs["mes"] is True and theirs["logger"] == "rq.worker"


def test_debug_is_readable_and_level_filters(capsys):
    configure_logging(debug=True)
    get_logger("mes.test.a").debug("details", n=1)  # a logger caches its configuration on first use
    err = capsys.readouterr().err
    assert "details" in err and not err.lstrip().startswith("{")
    configure_logging(level=logging.WARNING)
    log = get_logger("mes.test.b")
    log.info("hidden")
    log.warning("shown")
    err = capsys.readouterr().err
    assert "hidden" not in err and "shown" in err
    configure_logging()

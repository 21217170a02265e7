"""Logging: configured once, it follows whatever stderr is when a message is written."""

from __future__ import annotations

import io
import sys

import pytest
import structlog

from worldlm import logs


def test_logging_after_the_configuring_stderr_was_closed_goes_to_the_current_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    harness = io.StringIO()  # what a CLI test harness puts in place, then closes
    monkeypatch.setattr(sys, "stderr", harness)
    logs.configure(level="info", json=True)
    structlog.get_logger("t").info("while_swapped")
    assert '"event": "while_swapped"' in harness.getvalue()
    harness.close()
    now = io.StringIO()
    monkeypatch.setattr(sys, "stderr", now)
    structlog.get_logger("t").info("after_close")  # raised "I/O operation on closed file"
    assert '"event": "after_close"' in now.getvalue()

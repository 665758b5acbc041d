"""The chat server's log never prints a traceback's frame locals (tokens, the AMQP URI).

``bay chat serve`` logs through structlog; structlog's default console renderer draws
tracebacks with rich, frame locals included, so a failed delivery or compaction would print
whatever its frames held.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import structlog

from servicebay.cli import chat as chat_cli

TOKEN = "chat-user-token-in-a-frame"
URI = "amqp://app:amqp-pw-in-a-frame@127.0.0.1:5672/vh"


@pytest.fixture
def chat_logging() -> Iterator[None]:
    """structlog as ``bay chat serve`` sets it up; the defaults again afterwards."""
    chat_cli.configure_logging("info")
    try:
        yield
    finally:
        structlog.reset_defaults()


def _deliver(token: str) -> None:
    uri = URI
    raise RuntimeError(f"delivery failed after {len(uri)} bytes")


def test_logged_tracebacks_show_no_frame_locals(
    chat_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """A failure logged with its traceback names the error and the line, not the locals."""
    try:
        _deliver(TOKEN)
    except RuntimeError as exc:
        structlog.get_logger("servicebay.chat").error("chat.task_failed", exc_info=exc)
    out = capsys.readouterr()
    shown = out.out + out.err
    assert "chat.task_failed" in shown
    assert "RuntimeError: delivery failed" in shown
    assert TOKEN not in shown
    assert "amqp-pw-in-a-frame" not in shown

"""The sandbox broker served for real (`bay broker serve` subprocess) passes the self-test."""

from __future__ import annotations

import pytest

from servicebay.conformance import Outcome, run_checks
from servicebay.testing import serve_broker

pytestmark = pytest.mark.e2e


async def test_served_sandbox_passes_the_conformance_self_test() -> None:
    """Every check passes over a real socket against `bay broker serve`, all plans included."""
    with serve_broker("servicebay.examples.sandbox:broker") as served:
        report = await run_checks(
            served.url, username=served.username, password=served.password, poll_timeout=60
        )
    failed = [f"{r.check}: {r.detail}" for r in report.results if r.outcome is Outcome.FAIL]
    assert not failed, "\n".join(failed)
    assert report.get("plan[sandbox/async].provision.poll").outcome is Outcome.PASS

"""The RabbitMQ broker passes the OSB v2.17 self-test behind `bay broker check`, every plan."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from servicebay.broker import BrokerSettings
from servicebay.conformance import run_checks
from servicebay.testing import run_broker

pytestmark = pytest.mark.rabbitmq


async def test_broker_passes_the_conformance_checks(
    make_broker: Any, broker_db: Any, rabbitmq_prefix: str, rabbitmq_names: Any
) -> None:
    """Catalog, auth and version rules, bad input, and each plan's lifecycle: no check fails,
    and the checks' instances leave nothing behind in RabbitMQ."""
    settings = BrokerSettings(username="u", password="p", db=f"sqlite:///{broker_db}")
    async with run_broker(make_broker(), settings=settings) as running:
        report = await run_checks(
            running.url,
            username="u",
            password="p",
            transport=httpx.ASGITransport(app=running.app),
        )
    assert report.ok, [(r.check, r.detail) for r in report.failed]
    assert len(report.results) > 50
    assert rabbitmq_names(rabbitmq_prefix) == set()

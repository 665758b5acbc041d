"""While a broker app serves, what was built before it is set aside from the cyclic garbage
collector (full collections no longer walk it: a p99 pause); the last app to stop restores
the process's collector as it found it."""

from __future__ import annotations

import gc

from servicebay.examples.sandbox import broker
from servicebay.testing import run_broker


async def test_serving_freezes_the_startup_heap_and_stopping_restores_the_collector() -> None:
    before = gc.get_threshold()
    assert gc.get_freeze_count() == 0
    async with run_broker(broker) as served:
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold()[0] > before[0]
        assert (await served.client.get("/v2/catalog")).status_code == 200
        async with run_broker(broker) as second:  # two apps in one process (as in tests)
            assert (await second.client.get("/v2/catalog")).status_code == 200
        assert gc.get_freeze_count() > 0, "the first app still serves"
        assert gc.get_threshold()[0] > before[0]
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0

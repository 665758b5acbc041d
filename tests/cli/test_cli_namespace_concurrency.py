"""`bay namespace update` is a read-modify-write: a change made meanwhile is never lost."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from conftest import Bay, unique
from servicebay.cli._api import PlatformAPI


def test_update_refused_when_the_namespace_changed_since_read(
    bay: Bay, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another writer changes the namespace between our read and write: exit 5, theirs kept."""
    name = unique("ns")
    assert bay("namespace", "create", name).exit_code == 0
    real_namespace = PlatformAPI.namespace

    async def read_then_someone_writes(self: PlatformAPI, wanted: str) -> Any:
        current = await real_namespace(self, wanted)
        async with httpx.AsyncClient(base_url=bay.platform.url) as someone_else:
            other = await someone_else.put(
                f"/api/v1/namespaces/{wanted}",
                json={"description": "their change"},
                headers={"Authorization": f"Bearer {bay.token}"},
            )
        assert other.status_code == 200, other.text
        return current

    monkeypatch.setattr(PlatformAPI, "namespace", read_then_someone_writes)
    result = bay("namespace", "update", name, "--max-instances", "7")
    assert result.exit_code == 5, result.output
    assert result.stderr.strip() == (
        f"error: namespace {name!r} was changed by someone else since it was read; "
        "read it again and retry"
    )
    monkeypatch.setattr(PlatformAPI, "namespace", real_namespace)
    shown = json.loads(bay("namespace", "show", name, "-o", "json").stdout)
    assert (shown["description"], shown["max_instances"]) == ("their change", None)
    again = bay("namespace", "update", name, "--max-instances", "7")
    assert again.exit_code == 0, again.output
    shown = json.loads(bay("namespace", "show", name, "-o", "json").stdout)
    assert (shown["description"], shown["max_instances"]) == ("their change", 7)

"""Watching the root: rotated credentials reach a running app without a restart."""

from __future__ import annotations

import asyncio
import queue
import time
from pathlib import Path

from servicebay import bindings
from servicebay.bindings import Binding, Bindings


def _mq(password: str) -> Binding:
    return Binding.from_credentials("chat-mq", "rabbitmq", {"password": password})


def test_watch_reports_rotation_and_removal(tmp_path: Path) -> None:
    """on_change receives a new snapshot after a rewrite and after a removal."""
    bindings.write(_mq("one"), tmp_path)
    changes: queue.Queue[Bindings] = queue.Queue()
    with bindings.watch(changes.put, root=tmp_path, interval=0.05) as watcher:
        assert watcher.current.find(type="rabbitmq")["password"] == "one"
        bindings.write(_mq("two"), tmp_path)
        assert changes.get(timeout=10).find(type="rabbitmq")["password"] == "two"
        bindings.remove("chat-mq", tmp_path)
        assert len(changes.get(timeout=10)) == 0
        assert len(watcher.current) == 0


def test_watch_is_quiet_without_change(tmp_path: Path) -> None:
    """No change on disk, no callback — even across many polls."""
    bindings.write(_mq("one"), tmp_path)
    calls: list[Bindings] = []
    watcher = bindings.watch(calls.append, root=tmp_path, interval=0.01)
    deadline = time.monotonic() + 0.3
    while time.monotonic() < deadline:
        time.sleep(0.05)
    watcher.stop()
    assert calls == []


def test_watch_survives_a_failing_callback(tmp_path: Path) -> None:
    """A callback that raises does not stop later notifications."""
    seen: queue.Queue[str] = queue.Queue()

    def flaky(snapshot: Bindings) -> None:
        password = snapshot.find(type="rabbitmq")["password"]
        seen.put(password)
        if password == "two":
            raise RuntimeError("reconnect failed")

    bindings.write(_mq("one"), tmp_path)
    with bindings.watch(flaky, root=tmp_path, interval=0.05):
        bindings.write(_mq("two"), tmp_path)
        assert seen.get(timeout=10) == "two"
        bindings.write(_mq("three"), tmp_path)
        assert seen.get(timeout=10) == "three"


def test_watch_sees_root_appear(tmp_path: Path) -> None:
    """Watching a root that does not exist yet reports the bindings once it is written."""
    root = tmp_path / "later"
    changes: queue.Queue[Bindings] = queue.Queue()
    with bindings.watch(changes.put, root=root, interval=0.05):
        bindings.write(_mq("one"), root)
        assert changes.get(timeout=10).names == ["chat-mq"]


async def test_awatch_yields_changes(tmp_path: Path) -> None:
    """The asyncio form yields each new snapshot."""
    bindings.write(_mq("one"), tmp_path)
    changes = bindings.awatch(tmp_path, interval=0.05)

    async def rotate() -> None:
        await asyncio.sleep(0.1)
        await asyncio.to_thread(bindings.write, _mq("two"), tmp_path)

    task = asyncio.create_task(rotate())
    snapshot = await asyncio.wait_for(anext(changes), timeout=10)
    await task
    await changes.aclose()
    assert snapshot.find(type="rabbitmq")["password"] == "two"

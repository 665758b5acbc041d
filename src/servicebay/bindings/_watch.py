"""Watching the binding root, so an app picks up rotated credentials without a restart.

The watcher polls: it reloads the snapshot every ``interval`` seconds and reports it when it
differs from the last one. Polling works on every file system and sees the writer's atomic
symlink swaps as well as someone else's in-place edits; bindings are a handful of small files,
so a reload costs little. The spec allows the files to change at any time ("The collection of
files within the directory MAY change during the lifetime of the container").
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import AsyncGenerator, Callable
from types import TracebackType

from servicebay.bindings._collection import Bindings, load

logger = logging.getLogger("servicebay.bindings")

OnChange = Callable[[Bindings], object]


class Watcher:
    """A background thread calling ``on_change(snapshot)`` each time the bindings change.

    Use it as a context manager, or call :meth:`stop`. ``current`` is the latest snapshot.
    ``on_change`` runs on the watcher's thread; an exception in it is logged and the watch
    goes on (one bad reconnect attempt must not stop credential rotation).
    """

    def __init__(
        self,
        on_change: OnChange,
        *,
        root: str | os.PathLike[str] | None = None,
        interval: float = 1.0,
    ) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        self._on_change = on_change
        self._root = root
        self._interval = interval
        self._stopped = threading.Event()
        self.current: Bindings = load(root)
        self._thread = threading.Thread(target=self._run, name="servicebay-bindings", daemon=True)

    def start(self) -> Watcher:
        """Start watching (``watch()`` does this for you) and return self."""
        self._thread.start()
        return self

    def stop(self, timeout: float | None = 5.0) -> None:
        """Stop watching and wait for the thread (at most ``timeout`` seconds)."""
        self._stopped.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def __enter__(self) -> Watcher:
        """Return the running watcher."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop watching."""
        self.stop()

    def _run(self) -> None:
        """Poll until stopped; report each new snapshot."""
        while not self._stopped.wait(self._interval):
            try:
                snapshot = load(self._root)
            except Exception:
                # A root being replaced can fail to read for a moment; the next poll retries.
                logger.warning("reading the binding root failed; retrying", exc_info=True)
                continue
            if snapshot == self.current:
                continue
            self.current = snapshot
            try:
                self._on_change(snapshot)
            except Exception:
                logger.exception("binding on_change callback failed")


def watch(
    on_change: OnChange,
    *,
    root: str | os.PathLike[str] | None = None,
    interval: float = 1.0,
) -> Watcher:
    """Call ``on_change(snapshot)`` whenever the app's bindings change; return the running watcher.

    Example::

        def reconnect(snapshot):
            connect(snapshot.find(type="rabbitmq")["uri"])

        watcher = bindings.watch(reconnect)
        ...
        watcher.stop()
    """
    return Watcher(on_change, root=root, interval=interval).start()


async def awatch(
    root: str | os.PathLike[str] | None = None,
    *,
    interval: float = 1.0,
) -> AsyncGenerator[Bindings, None]:
    """Yield a new snapshot each time the bindings change (the asyncio form of :func:`watch`).

    Reads happen in a worker thread so the event loop never blocks on the file system.

    Example::

        async for snapshot in bindings.awatch():
            await reconnect(snapshot.find(type="rabbitmq"))
    """
    if interval <= 0:
        raise ValueError("interval must be positive")
    current = await asyncio.to_thread(load, root)
    while True:
        await asyncio.sleep(interval)
        snapshot = await asyncio.to_thread(load, root)
        if snapshot != current:
            current = snapshot
            yield snapshot

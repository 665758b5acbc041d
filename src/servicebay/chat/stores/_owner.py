"""Who owns a chat store: an exclusive OS lock on a file next to the store's SQLite file.

Where it sits: ``SQLiteChatStore.open`` (and so the RabbitMQ store's metadata, which is an
SQLite store too) takes the lock before it touches the database; ``close`` gives it back. One
server process owns a store (the hub fans out from memory, seqs are assigned from cached
heads): a second server on the same file would split the room's sequence, so it is refused.

The lock is ``flock(LOCK_EX | LOCK_NB)`` on ``<db>.lock``. The kernel drops it with the last
descriptor of the process, SIGKILL included, so a server restarted right after ``kill -9``
opens at once; a stale file never blocks (the file stays, only the lock matters). The file
holds the owner's pid, to name it in the refusal.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from servicebay.chat.stores.base import StoreInUse, StoreNotOpened


class OwnerLock:
    """The exclusive lock on ``<path>.lock`` while this process serves the store at ``path``."""

    def __init__(self, path: str | Path) -> None:
        """Lock for the store file at ``path`` (not taken yet)."""
        self.store = Path(path)
        self.path = Path(f"{path}.lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise ``StoreInUse`` naming the owner's pid."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            why = exc.strerror
            raise StoreNotOpened(f"cannot create the lock file {self.path}: {why}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise StoreInUse(
                f"the store {self.store} is in use by another chat server "
                f"(pid {owner}, lock {self.path}): one server per store"
            ) from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as exc:
            os.close(fd)  # the lock goes with it: no half-taken ownership stays behind
            raise StoreNotOpened(
                f"cannot write the lock file {self.path}: {exc.strerror}"
            ) from None
        self._fd = fd

    def release(self) -> None:
        """Give the lock back (closing the descriptor releases it)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

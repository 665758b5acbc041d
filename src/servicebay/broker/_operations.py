"""Asynchronous operations: run in the background, recorded durably, never forgotten.

When the author says an operation is asynchronous, the lifecycle records an `OperationRecord`
(state `in progress`, owned by this process) and hands a `Job` to `Operations.spawn`. The job
then runs as an asyncio task:

    spawn ─► run job (bounded by the plan's maximum_polling_duration) ─► succeeded
                │ heartbeat renews the lease while it runs           └─► failed (+ job.fail)
                └─ shutdown: waits `grace` seconds, then leaves the rest `in progress`, unowned

Durability: on startup, and every half lease afterwards, unfinished operations whose lease is
free or stale (their process died) are claimed and re-run from the start — author methods must
be idempotent — or, when the broker is not `resumable` or the deadline has passed, marked failed
with a description saying why. `last_operation` therefore always ends in a terminal state.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog

from servicebay import osb
from servicebay.broker._author import OperationContext, OperationKind
from servicebay.broker._errors import log_crash
from servicebay.broker._metrics import BrokerMetrics
from servicebay.broker._store import OperationRecord, Store, utcnow

__all__ = ["Job", "JobFactory", "Operations", "failure_of", "is_overdue", "owner_id"]

log = structlog.get_logger("servicebay.broker")

#: Flags the spec allows on failed last_operation answers for these kinds only.
_FLAGGED = (OperationKind.UPDATE.value, OperationKind.DEPROVISION.value)


@dataclass(frozen=True, slots=True)
class Job:
    """The work of one operation: `run` calls the author and records success; `fail` records
    what a failure leaves behind (the operation record itself is the runner's business)."""

    kind: OperationKind
    run: Callable[[OperationContext], Awaitable[None]]
    fail: Callable[[], Awaitable[None]]


#: Rebuilds the job of a recorded operation (after a restart); raises if it cannot.
JobFactory = Callable[[OperationRecord], Awaitable[Job]]


def failure_of(error: BaseException) -> osb.OSBError:
    """The OSB error a failure is reported as; unexpected exceptions say only "internal error"."""
    if isinstance(error, osb.OSBError):
        return error
    return osb.InternalError("internal error")


class _Lease:
    """Whether this process lost an operation's lease while running it."""

    __slots__ = ("lost",)

    def __init__(self) -> None:
        self.lost = False


class Operations:
    """Runs, resumes and settles the asynchronous operations of one app."""

    def __init__(
        self,
        store: Store,
        metrics: BrokerMetrics,
        *,
        owner: str,
        lease: float,
        resumable: bool,
        job_factory: JobFactory,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.owner = owner
        self.lease = lease
        self.resumable = resumable
        self.job_factory = job_factory
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._reaper: asyncio.Task[None] | None = None
        self._closing = False

    # --- starting work ---

    def new_record(
        self,
        kind: OperationKind,
        instance_id: str,
        binding_id: str | None,
        request: dict[str, object],
        max_duration: int | None,
    ) -> OperationRecord:
        """A fresh `in progress` record owned by this process (not yet stored)."""
        now = utcnow()
        return OperationRecord(
            operation_id=uuid.uuid4().hex,
            kind=kind.value,
            instance_id=instance_id,
            binding_id=binding_id,
            request=dict(request),
            deadline=now + timedelta(seconds=max_duration) if max_duration else None,
            owner=self.owner,
            heartbeat_at=now,
            created_at=now,
            updated_at=now,
        )

    def spawn(self, op: OperationRecord, job: Job) -> None:
        """Run `job` for the stored, owned operation `op` in the background."""
        if self._closing:
            raise osb.InternalError("the broker is stopping; try again")
        task = asyncio.create_task(self._execute(op, job), name=f"operation-{op.operation_id}")
        self._tasks[op.operation_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(op.operation_id, None))

    async def _execute(self, op: OperationRecord, job: Job) -> None:
        logger = log.bind(
            operation_id=op.operation_id,
            kind=op.kind,
            instance_id=op.instance_id,
            binding_id=op.binding_id,
        )

        async def report(description: str) -> None:
            op.description, op.heartbeat_at = description, utcnow()
            await self.store.put_operation(op)

        ctx = OperationContext(
            operation_id=op.operation_id, is_async=True, logger=logger, report=report
        )
        started = time.perf_counter()
        this = asyncio.current_task()
        assert this is not None  # spawn() runs us as a task
        lease = _Lease()
        heartbeat = asyncio.create_task(self._heartbeat(op, this, lease))
        budget = asyncio.timeout(_remaining(op.deadline))
        self.metrics.operation_started()
        try:
            async with budget:
                await job.run(ctx)
        except asyncio.CancelledError:
            heartbeat.cancel()
            if lease.lost:
                # Another process owns the operation now; it records the outcome.
                return
            if self._closing:
                await self._release(op)
            raise
        except Exception as error:
            failure = _timed_out(op) if budget.expired() else error
            await self._finish(op, job, failure, logger, started)
        else:
            await self._finish(op, job, None, logger, started)
        finally:
            heartbeat.cancel()
            self.metrics.operation_stopped()

    async def _finish(
        self,
        op: OperationRecord,
        job: Job,
        error: BaseException | None,
        logger: structlog.typing.FilteringBoundLogger,
        started: float,
    ) -> None:
        if error is None:
            op.state, op.description = "succeeded", None
        else:
            failure = failure_of(error)
            if isinstance(error, osb.OSBError):
                logger.warning("operation failed", description=failure.description)
            else:
                log_crash(logger, "operation crashed", error)
            try:
                await job.fail()
            except Exception as fail_error:  # the operation record below is what matters
                log_crash(logger, "recording the failure failed", fail_error)
            op.state, op.description = "failed", failure.description
            if op.kind in _FLAGGED:
                op.instance_usable = failure.instance_usable
                op.update_repeatable = failure.update_repeatable
        op.owner = None
        await self.store.put_operation(op)
        self.metrics.observe_operation(op.kind, "async", op.state, time.perf_counter() - started)
        logger.info("operation finished", state=op.state)

    async def _heartbeat(self, op: OperationRecord, job: asyncio.Task[None], lease: _Lease) -> None:
        while True:
            await asyncio.sleep(self.lease / 3)
            if not await self.store.heartbeat(op.operation_id, self.owner):
                # Another process took the operation over (we looked dead): stop our run, so
                # the author's method never runs twice at once for one operation.
                log.warning("operation lease lost", operation_id=op.operation_id)
                lease.lost = True
                job.cancel()
                return

    async def _release(self, op: OperationRecord) -> None:
        """Leave an interrupted operation `in progress` and unowned: the next start resumes it."""
        op.owner, op.heartbeat_at = None, None
        op.description = "interrupted by a broker shutdown; resumes when the broker restarts"
        with contextlib.suppress(Exception):
            await asyncio.shield(self.store.put_operation(op))

    # --- resuming work ---

    async def start(self) -> None:
        """Resume what earlier processes left unfinished, and keep watching for it."""
        await self.adopt_orphans()
        self._reaper = asyncio.create_task(self._reap(), name="operations-reaper")

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(self.lease / 2)
            try:
                await self.adopt_orphans()
            except Exception as error:  # keep watching; the next round may succeed
                log_crash(log, "resuming operations failed", error)

    async def adopt_orphans(self) -> None:
        """Claim every unfinished operation no live process holds; resume or fail each."""
        for op in await self.store.unfinished_operations():
            if op.operation_id in self._tasks or self._closing:
                continue
            if op.owner == self.owner and not _stale(op.heartbeat_at, self.lease):
                continue  # a request just created it and is about to run it here

            stale_after = 0.0 if _died_here(op.owner) else self.lease
            if not await self.store.claim_operation(op.operation_id, self.owner, stale_after):
                continue
            claimed = await self.store.get_operation(op.operation_id)
            if claimed is None or claimed.state != "in progress":
                continue
            await self._adopt(claimed)

    async def _adopt(self, op: OperationRecord) -> None:
        logger = log.bind(operation_id=op.operation_id, kind=op.kind, instance_id=op.instance_id)
        try:
            job = await self.job_factory(op)
        except Exception as error:
            log_crash(logger, "cannot resume operation", error)
            op.state, op.owner = "failed", None
            op.description = "the operation could not be resumed after a broker restart"
            await self.store.put_operation(op)
            return
        if op.deadline is not None and op.deadline <= utcnow():
            await self._finish(op, job, _timed_out(op), logger, time.perf_counter())
        elif not self.resumable:
            interrupted = osb.InternalError(
                "the operation was interrupted by a broker restart and cannot be resumed"
            )
            await self._finish(op, job, interrupted, logger, time.perf_counter())
        elif op.operation_id not in self._tasks and not self._closing:
            logger.info("resuming operation")
            op.owner, op.heartbeat_at = self.owner, utcnow()
            self.spawn(op, job)

    # --- stopping ---

    async def close(self, grace: float) -> None:
        """Wait up to `grace` seconds for running operations; record the rest as interrupted."""
        self._closing = True
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        tasks = list(self._tasks.values())
        if tasks:
            log.info("waiting for operations", count=len(tasks), grace_seconds=grace)
            _, pending = await asyncio.wait(tasks, timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
                log.warning("operations interrupted by shutdown", count=len(pending))

    @property
    def running(self) -> int:
        """How many operations this process is running now."""
        return len(self._tasks)


def owner_id() -> str:
    """A lease owner id for this process: ``host:pid:random``."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _died_here(owner: str | None) -> bool:
    """True when `owner` was a process on this host that no longer runs: its lease is void."""
    host, _, rest = (owner or "").partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit() or int(pid_text) == os.getpid():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, owned by someone else
        return False
    return False


def _stale(heartbeat_at: datetime | None, lease: float) -> bool:
    return heartbeat_at is None or (utcnow() - heartbeat_at).total_seconds() > lease


def _remaining(deadline: datetime | None) -> float | None:
    if deadline is None:
        return None
    return max(0.0, (deadline - utcnow()).total_seconds())


def _timed_out(op: OperationRecord) -> osb.OSBError:
    # spec "Polling Interval and Duration": past maximum_polling_duration the operation is failed.
    return osb.InternalError(
        "the operation did not finish within the plan's maximum_polling_duration"
    )


def is_overdue(op: OperationRecord, now: datetime | None = None) -> bool:
    """True when an `in progress` operation is past its deadline."""
    return op.deadline is not None and op.deadline <= (now or utcnow())

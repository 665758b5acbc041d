"""The worker: drives queued operations to the broker, one step at a time, from the database.

Every platform process runs one in-process (``bay server``), and ``bay worker`` adds more. A
worker *claims* a due operation by taking a short lease on its row (``SELECT ... FOR UPDATE
SKIP LOCKED`` on PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite), performs exactly one broker call
(send, poll, or fetch), then writes the outcome and releases the lease in one transaction that
first checks it still owns the row. The phase (``send`` → ``poll`` → ``fetch``), the broker's
operation string and the polling deadline are stored, so a worker killed at any moment is
replaced by any other: the lease expires, the next claim resumes at the stored phase, and no
operation is driven by two workers at once. An operation queued by this process's API while a
slot is free arrives already leased, through :meth:`Worker.deliver`, and skips the claim.

Outcomes follow the spec's Orphan Mitigation table (classified in ``broker_link``): when the
broker may have created something the platform cannot be sure of, the operation fails and a
child ``orphan_mitigation`` operation keeps deleting it until the broker confirms.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from servicebay.platform.broker_link import BrokerEndpoint, Reply, Verdict
from servicebay.platform.services.catalog import broker_columns, handoff_of
from servicebay.platform.services.operations import audit, enqueue
from servicebay.platform.services.records import operation_view
from servicebay.platform.services.runtime import CHANGED, Handoff, Platform
from servicebay.platform.store import (
    Statement,
    by_id_params,
    delete_by_id,
    tables,
    update_by_id,
    utcnow,
)

log = logging.getLogger("servicebay.platform.worker")

ACTIVE = ("queued", "in progress")
UNREACHABLE_GIVE_UP = dt.timedelta(minutes=10)


@functools.cache
def _job_query() -> sa.Select[Any]:
    """An operation with its instance, plan, service, broker and binding (built once)."""
    o, i, p, s, b, bi = (
        tables.operations,
        tables.instances,
        tables.plans,
        tables.services,
        tables.brokers,
        tables.bindings,
    )
    return (
        sa.select(
            o,
            i.c.id.label("target_instance"),
            *broker_columns(),
            bi.c.kind.label("binding_kind"),
        )
        .select_from(o)
        .outerjoin(i, i.c.id == o.c.instance_id)
        .outerjoin(p, p.c.id == i.c.plan_pk)
        .outerjoin(s, s.c.id == p.c.service_pk)
        .outerjoin(b, b.c.id == s.c.broker_id)
        .outerjoin(bi, bi.c.id == o.c.binding_id)
        .where(o.c.id == sa.bindparam("op_id"))
    )


_ANY_DUE = Statement(
    sa.select(tables.operations.c.id)
    .where(
        sa.or_(*(tables.operations.c.state == state for state in ACTIVE)),
        tables.operations.c.next_attempt_at <= sa.bindparam("now"),
        sa.or_(
            tables.operations.c.lease_until.is_(None),
            tables.operations.c.lease_until < sa.bindparam("now"),
        ),
    )
    .limit(1)
)


class LeaseLost(Exception):
    """Another worker took the operation over (our lease expired); our result is discarded."""


@dataclass
class Job:
    """One claimed operation with everything its step needs."""

    op: dict[str, Any]
    request: dict[str, Any]
    endpoint: BrokerEndpoint
    instance_id: str
    service_id: str
    plan_id: str
    max_polling: float | None
    binding_id: str | None
    binding_kind: str | None


Step = Callable[["Worker", Job], Awaitable[None]]


class Worker:
    """Claims due operations and drives them, ``concurrency`` at a time."""

    def __init__(self, platform: Platform, *, concurrency: int | None = None) -> None:
        self.platform = platform
        self.settings = platform.settings
        self.concurrency = concurrency or self.settings.worker_concurrency
        self.id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._running: set[asyncio.Task[None]] = set()
        # Slots kept for operations the API is queueing (id -> when), see reserve().
        self._reserved: dict[str, float] = {}
        self._accepting = False
        self._starved = False
        # What each step committed last, as the API shows it: handed to waiters by drive().
        self._results: dict[str, dict[str, Any]] = {}
        # Operations being driven now, whose leases _renew_leases keeps alive.
        self._driving: set[str] = set()
        self._renewing: asyncio.Task[None] | None = None

    async def run(self, stop: asyncio.Event) -> None:
        """Work until ``stop`` is set, driving up to ``concurrency`` operations at once.

        Operations queued by this process's API arrive leased, through :meth:`deliver`. One
        loop claims the others (queued elsewhere, or due again) for every free slot in a
        single transaction (a write transaction is the scarce resource, on SQLite especially)
        and hands each operation to its own task.
        """
        self.platform.local = self
        self._accepting = True
        try:
            while not stop.is_set():
                self._expire_reservations()
                free = self.concurrency - len(self._running) - len(self._reserved)
                jobs: list[Job] = []
                if free > 0:
                    try:
                        jobs = await self.claim(free)
                    except Exception:
                        log.exception("claiming operations failed")
                for job in jobs:
                    self._start(self.drive(job))
                if jobs and len(jobs) < free:
                    continue  # there may be more due right now
                # Every slot taken, so more may be due: the next step to end wakes this loop.
                self._starved = free <= 0 or len(jobs) == free
                await self._idle(stop)
        finally:
            self._accepting = False
            if self.platform.local is self:
                self.platform.local = None
            if self._running:
                await asyncio.wait(self._running, timeout=self.settings.broker_timeout)
            for task in self._running:
                task.cancel()

    def _start(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._running.add(task)
        task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        if self._starved:
            self.platform.notify()  # a slot is free again and the claim loop wanted one

    async def _idle(self, stop: asyncio.Event) -> None:
        """Wait for new work (wake-up), the poll interval, or ``stop``."""
        waits = {
            asyncio.ensure_future(self.platform.wake.wait()),
            asyncio.ensure_future(stop.wait()),
        }
        try:
            await asyncio.wait(
                waits, timeout=self.settings.poll_interval, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for waiting in waits:
                waiting.cancel()
        self.platform.wake.clear()

    # -- hand-off from this process's API ---------------------------------------------------

    def reserve(self, operation_id: str) -> dt.datetime | None:
        """Keep a slot for an operation the API is queueing; the lease's end, or None if full.

        The API stores the operation already leased to this worker, so no claim is needed,
        and hands it over with :meth:`deliver` once committed. A reservation never delivered
        (the transaction failed) expires; a lease never driven lapses and any worker claims it.
        """
        if not self._accepting:
            return None
        if len(self._running) + len(self._reserved) >= self.concurrency:
            self._starved = True
            return None
        self._reserved[operation_id] = time.monotonic()
        return utcnow() + dt.timedelta(seconds=self.settings.lease_seconds)

    def release(self, operation_id: str) -> None:
        """Give back the slot reserved for an operation whose transaction rolled back."""
        self._reserved.pop(operation_id, None)

    def deliver(self, operation: dict[str, Any], handoff: Handoff | None = None) -> None:
        """Start driving an operation leased with :meth:`reserve` (after its commit); with a
        ``handoff``, without reading anything back."""
        if self._reserved.pop(operation["id"], None) is not None and self._accepting:
            if handoff is None:
                self._start(self._take(operation))
            else:
                self._start(self.drive(self._job_with(dict(operation), handoff)))

    def _expire_reservations(self) -> None:
        limit = time.monotonic() - self.settings.lease_seconds
        for op_id, since in list(self._reserved.items()):
            if since < limit:
                del self._reserved[op_id]

    async def _take(self, operation: dict[str, Any]) -> None:
        try:
            async with self.platform.db.read() as conn:
                row = await self._load(conn, operation["id"])
            job = self._job_from(row, operation["lease_until"])
            if job is None and self._target_missing(row):
                async with self.platform.db.begin() as conn:
                    await self._fail_missing(conn, row)
        except Exception:
            # Not swallowed: logged, and the lease lapses so that a claim picks it up again.
            log.exception("taking over a queued operation failed", extra={"op": operation["id"]})
            return
        if job is not None:
            await self.drive(job)

    async def run_until_idle(self) -> None:
        """Drive operations one by one until none is due (tests and one-shot use)."""
        while jobs := await self.claim(1):
            for job in jobs:
                await self.drive(job)

    # -- claiming ---------------------------------------------------------------------------

    async def claim(self, limit: int) -> list[Job]:
        """Lease up to ``limit`` due operations (one transaction) and load what they need."""
        o = tables.operations
        now = utcnow()
        free = sa.or_(o.c.lease_until.is_(None), o.c.lease_until < now)
        due = sa.and_(o.c.state.in_(ACTIVE), o.c.next_attempt_at <= now, free)
        pick = sa.select(o.c.id).where(due).order_by(o.c.next_attempt_at).limit(limit)
        if self.platform.db.is_postgres:
            pick = pick.with_for_update(skip_locked=True)
        # Microseconds of the lease tell this claim's rows apart from any other's.
        lease = now + dt.timedelta(seconds=self.settings.lease_seconds)
        if not self.platform.db.is_postgres:
            # Look before taking SQLite's one write lock: most wake-ups find nothing due.
            async with self.platform.db.read() as conn:
                if await _ANY_DUE.scalar(conn, {"now": now}) is None:
                    return []
        async with self.platform.db.begin() as conn:
            ids = list((await conn.scalars(pick)).all())
            if not ids:
                return []
            await conn.execute(
                o.update()
                .where(o.c.id.in_(ids), due)
                .values(
                    owner=self.id,
                    lease_until=lease,
                    state="in progress",
                    attempts=o.c.attempts + 1,
                    updated_at=now,
                )
            )
            jobs = []
            for op_id in ids:
                job = await self._job(conn, op_id, lease)
                if job is not None:
                    jobs.append(job)
            return jobs

    async def _job(self, conn: AsyncConnection, op_id: str, lease: dt.datetime) -> Job | None:
        """Load a claimed operation with its instance, plan, broker and binding in one query."""
        row = await self._load(conn, op_id)
        job = self._job_from(row, lease)
        if job is None and self._target_missing(row) and self._owns(row, lease):
            with contextlib.suppress(LeaseLost):
                await self._fail_missing(conn, row)
        return job

    async def _load(self, conn: AsyncConnection, op_id: str) -> Any:
        return (await conn.execute(_job_query(), {"op_id": op_id})).mappings().one()

    def _owns(self, row: Any, lease: dt.datetime) -> bool:
        return bool(row["owner"] == self.id and row["lease_until"] == lease)

    def _target_missing(self, row: Any) -> bool:
        missing_binding = row["binding_id"] is not None and row["binding_kind"] is None
        return row["target_instance"] is None or missing_binding

    async def _fail_missing(self, conn: AsyncConnection, row: Any) -> None:
        op = {column.name: row[column.name] for column in tables.operations.columns}
        await self._finish(conn, op, "failed", "the record no longer exists")
        self._results.pop(op["id"], None)

    def _job_from(self, row: Any, lease: dt.datetime) -> Job | None:
        """The job of a loaded operation if this worker holds its lease and its record exists."""
        if not self._owns(row, lease) or self._target_missing(row):
            return None  # not ours after all (another worker claimed it first), or gone
        op = {column.name: row[column.name] for column in tables.operations.columns}
        request = self.platform.cipher.open(op["request"]) or {}
        target = handoff_of(
            row, request, instance_id=row["target_instance"], binding_kind=row["binding_kind"]
        )
        return self._job_with(op, target)

    def _job_with(self, op: dict[str, Any], handoff: Handoff) -> Job:
        # An update to another plan polls and deprovisions with the plan it is moving to.
        plan_id = handoff.request.get("body", {}).get("plan_id") or handoff.plan_id
        endpoint = self.platform.endpoint(handoff.broker_url, handoff.broker_credentials)
        if sent := handoff.request.get("secret_values"):
            # A broker quoting them back in an error must not get them stored or shown.
            endpoint = replace(endpoint, sent_secrets=tuple(sent))
        return Job(
            op=op,
            request=handoff.request,
            endpoint=endpoint,
            instance_id=handoff.instance_id,
            service_id=handoff.service_id,
            plan_id=plan_id,
            max_polling=handoff.max_polling,
            binding_id=op["binding_id"],
            binding_kind=handoff.binding_kind,
        )

    # -- driving ----------------------------------------------------------------------------

    async def drive(self, job: Job) -> None:
        """Run one step of a claimed operation, keeping its lease alive meanwhile."""
        op_id = job.op["id"]
        self._driving.add(op_id)
        if self._renewing is None:
            self._renewing = asyncio.create_task(self._renew_leases())
        result: dict[str, Any] | None = None
        try:
            step = _STEPS[(job.op["kind"], job.op["phase"])]
            await step(self, job)
            committed = self._results.pop(job.op["id"], None)
            result = operation_view(committed) if committed is not None else None
        except LeaseLost:
            log.warning("lease lost; another worker continues", extra={"op": job.op["id"]})
        except Exception:
            # Not swallowed: logged with its traceback, and the operation is retried later.
            log.exception("operation step failed", extra={"op": job.op["id"]})
            with contextlib.suppress(LeaseLost):
                async with self._owned(job) as conn:
                    await self._reschedule(
                        conn, job, self._backoff(job), description="internal error; retrying"
                    )
        finally:
            self._results.pop(job.op["id"], None)  # a result not committed is no result
            self._driving.discard(op_id)
            if not self._driving and self._renewing is not None:
                self._renewing.cancel()
                self._renewing = None
            self.platform.changed(op_id, result)

    async def _renew_leases(self) -> None:
        """Keep the leases of the operations being driven alive, all in one update, for as
        long as any is (one task for them all, not one per step)."""
        o = tables.operations
        interval = self.settings.lease_seconds / 3
        while True:
            await asyncio.sleep(interval)
            driving = sorted(self._driving)
            lease = utcnow() + dt.timedelta(seconds=self.settings.lease_seconds)
            try:
                async with self.platform.db.begin() as conn:
                    await conn.execute(
                        o.update()
                        .where(o.c.id.in_(driving), o.c.owner == self.id)
                        .values(lease_until=lease)
                    )
            except Exception:
                log.exception("renewing leases failed", extra={"ops": driving})

    @contextlib.asynccontextmanager
    async def _owned(self, job: Job) -> AsyncIterator[AsyncConnection]:
        """A transaction that commits only while this worker still owns the operation.

        The guard is in :meth:`_reschedule` and :meth:`_finish` (every step ends with one of
        them): their update names this worker as owner, and if no row matched they raise
        ``LeaseLost``, which rolls back everything the step wrote.
        """
        async with self.platform.db.begin() as conn:
            yield conn

    def _backoff(self, job: Job) -> float:
        base = self.settings.default_retry_after
        exponent = min(max(job.op["attempts"] - 1, 0), 10)
        return float(min(self.settings.orphan_backoff_cap, base * 2**exponent))

    def _poll_delay(self, reply: Reply) -> float:
        if reply.retry_after is not None:
            return reply.retry_after
        return self.settings.default_retry_after

    async def _reschedule(
        self, conn: AsyncConnection, job: Job, delay: float, **values: Any
    ) -> None:
        now = utcnow()
        values.update(
            owner=None,
            lease_until=None,
            next_attempt_at=now + dt.timedelta(seconds=delay),
            updated_at=now,
        )
        await self._guarded(conn, job.op["id"], values)

    async def _guarded(self, conn: AsyncConnection, op_id: str, values: dict[str, Any]) -> None:
        """Update an active operation this worker owns, or raise ``LeaseLost``."""
        update = update_by_id(tables.operations, tuple(values), ("state", ACTIVE))
        if await update.run(conn, by_id_params(op_id, values, owner=self.id)) != 1:
            raise LeaseLost(op_id)

    async def _finish(
        self, conn: AsyncConnection, op: dict[str, Any], state: str, description: str
    ) -> None:
        now = utcnow()
        values = {
            "state": state,
            "description": description,
            "owner": None,
            "lease_until": None,
            "finished_at": now,
            "updated_at": now,
        }
        await self._guarded(conn, op["id"], values)
        await self.platform.db.notify(conn, CHANGED, op["id"])  # waiters in other processes
        finished = {**op, "state": state, "description": description}
        self._results[op["id"]] = {**finished, "finished_at": now, "updated_at": now}
        target = f"{op['namespace']}/{op['binding_name'] or op['instance_name']}"
        await audit(
            conn,
            user=op["created_by"],
            action=f"operation.{op['kind']}",
            target=target,
            outcome=state,
            operation_id=op["id"],
            details={"description": description},
        )

    async def _set_target(self, conn: AsyncConnection, job: Job, **values: Any) -> None:
        """Update the operation's instance or binding; call it after the operation's update.

        On PostgreSQL updating an operation also updates its instance (the view triggers of
        migration 0003), so that transaction locks the operation, then the instance. Every
        worker path keeps that order (``_finish``/``_reschedule`` first, then this): one that
        locked the instance first could deadlock with another transaction on the operation.
        """
        table = tables.bindings if job.binding_id else tables.instances
        values["updated_at"] = utcnow()
        key = job.binding_id or job.instance_id
        await update_by_id(table, tuple(values)).run(conn, by_id_params(key, values))

    async def _delete_target(self, conn: AsyncConnection, job: Job) -> None:
        table = tables.bindings if job.binding_id else tables.instances
        key = job.binding_id or job.instance_id
        await delete_by_id(table).run(conn, by_id_params(key, {}))

    async def _orphan_mitigation(
        self, conn: AsyncConnection, job: Job, reason: str, *, then: str
    ) -> None:
        """Fail the operation and start deleting what the broker may have created."""
        op = job.op
        request: dict[str, Any] = {"then": then}
        if sent := job.request.get("secret_values"):
            request["secret_values"] = sent  # the deletion's answers are masked as the parent's
        child = await enqueue(
            conn,
            self.platform,
            kind="orphan_mitigation",
            namespace=op["namespace"],
            user=op["created_by"],
            instance_id=op["instance_id"],
            instance_name=op["instance_name"],
            binding_id=op["binding_id"],
            binding_name=op["binding_name"],
            parent_id=op["id"],
            request=request,
            description=f"deleting what the broker may have created ({reason})",
        )
        await self._finish(conn, op, "failed", f"{reason}; orphan mitigation started")
        o = tables.operations
        await conn.execute(
            o.update().where(o.c.id == op["id"]).values(orphan_mitigation_id=child["id"])
        )
        self._results[op["id"]]["orphan_mitigation_id"] = child["id"]
        await self._set_target(conn, job, state="orphan_mitigation", last_operation_id=child["id"])
        self.platform.notify()

    def _past(self, deadline: dt.datetime | None) -> bool:
        return deadline is not None and utcnow() >= deadline

    def _poll_deadline(self, job: Job) -> dt.datetime:
        seconds = job.max_polling or self.settings.max_polling_duration
        return utcnow() + dt.timedelta(seconds=seconds)

    async def _retry_send(self, job: Job, reply: Reply, on_give_up: str) -> None:
        """The request did not reach the broker: send again later, for a bounded time."""
        async with self._owned(job) as conn:
            if utcnow() - job.op["created_at"] > UNREACHABLE_GIVE_UP:
                await self._finish(conn, job.op, "failed", f"gave up: {reply.description}")
                await self._set_target(conn, job, state=on_give_up)
                return
            delay = self._backoff(job)
            await self._reschedule(
                conn, job, delay, description=f"{reply.description}; retrying in {delay:.0f}s"
            )

    async def _wait_more(self, job: Job, reply: Reply, description: str) -> None:
        async with self._owned(job) as conn:
            await self._reschedule(conn, job, self._poll_delay(reply), description=description)

    # -- provision --------------------------------------------------------------------------

    async def provision_send(self, job: Job) -> None:
        """Send the provision request."""
        body = job.request["body"]
        reply = await self.platform.link.provision(
            job.endpoint, job.instance_id, body, job.op["created_by"]
        )
        if reply.verdict is Verdict.RETRY:
            return await self._retry_send(job, reply, "failed")
        async with self._owned(job) as conn:
            if reply.verdict is Verdict.DONE:
                await self._finish(conn, job.op, "succeeded", "provisioned")
                await self._set_target(
                    conn, job, state="ready", dashboard_url=reply.body.get("dashboard_url")
                )
            elif reply.verdict is Verdict.ACCEPTED:
                await self._accepted(conn, job, reply)  # the operation first: see _set_target
                await self._set_target(conn, job, dashboard_url=reply.body.get("dashboard_url"))
            elif reply.orphan_mitigation:
                await self._orphan_mitigation(conn, job, reply.description, then="keep")
            else:
                await self._finish(conn, job.op, "failed", reply.description)
                await self._set_target(conn, job, state="failed")

    async def _accepted(self, conn: AsyncConnection, job: Job, reply: Reply) -> None:
        await self._reschedule(
            conn,
            job,
            self._poll_delay(reply),
            phase="poll",
            broker_operation=reply.operation,
            deadline=self._poll_deadline(job),
            description="accepted by the broker; in progress",
        )

    async def _poll(self, job: Job) -> Reply:
        query = {"service_id": job.service_id, "plan_id": job.plan_id}
        if job.op["broker_operation"]:
            query["operation"] = job.op["broker_operation"]
        binding = job.binding_id if job.op["kind"] in ("bind", "unbind") else None
        if job.op["kind"] == "orphan_mitigation":
            binding = job.binding_id
        return await self.platform.link.last_operation(
            job.endpoint, job.instance_id, binding, query, job.op["created_by"]
        )

    async def provision_poll(self, job: Job) -> None:
        """Poll an async provision."""
        await self._poll_create(job, ready={"state": "ready"})

    async def _poll_create(self, job: Job, ready: dict[str, Any]) -> None:
        reply = await self._poll(job)
        state = reply.body.get("state") if reply.verdict is Verdict.DONE else None
        if state == "in progress" and not self._past(job.op["deadline"]):
            return await self._wait_more(job, reply, reply.description)
        async with self._owned(job) as conn:
            if state == "succeeded":
                if job.op["kind"] == "bind":
                    await self._reschedule(
                        conn, job, 0, phase="fetch", description="fetching the credentials"
                    )
                    return
                await self._finish(conn, job.op, "succeeded", reply.description)
                await self._set_target(conn, job, **ready)
            elif state == "failed":
                # spec: Orphan Mitigation, row "200 with state failed" for provision/bind.
                await self._orphan_mitigation(
                    conn, job, f"failed: {reply.description}", then="keep"
                )
            elif reply.verdict is Verdict.GONE:
                await self._finish(conn, job.op, "failed", "the broker no longer knows it (410)")
                await self._set_target(conn, job, state="failed")
            elif self._past(job.op["deadline"]):
                await self._orphan_mitigation(conn, job, "polling deadline passed", then="keep")
            else:
                await self._reschedule(
                    conn, job, self._backoff(job), description=f"polling: {reply.description}"
                )

    # -- update -----------------------------------------------------------------------------

    async def update_send(self, job: Job) -> None:
        """Send the update request."""
        reply = await self.platform.link.update(
            job.endpoint, job.instance_id, job.request["body"], job.op["created_by"]
        )
        if reply.verdict is Verdict.RETRY:
            return await self._retry_send(job, reply, job.request.get("previous_state", "ready"))
        async with self._owned(job) as conn:
            if reply.verdict is Verdict.DONE:
                await self._apply_update(conn, job, reply)
            elif reply.verdict is Verdict.ACCEPTED:
                await self._accepted(conn, job, reply)
            else:
                await self._update_failed(conn, job, reply)

    async def _apply_update(self, conn: AsyncConnection, job: Job, reply: Reply) -> None:
        request = job.request
        values: dict[str, Any] = {
            "state": "ready",
            "plan_pk": request["plan_pk"],
            "parameters": self.platform.cipher.seal(request["parameters"]),
            "parameters_shown": request["parameters_shown"],
        }
        if request.get("maintenance_info") is not None:
            values["maintenance_info"] = request["maintenance_info"]
        if reply.body.get("dashboard_url"):
            values["dashboard_url"] = reply.body["dashboard_url"]
        await self._finish(conn, job.op, "succeeded", "updated")
        await self._set_target(conn, job, **values)

    async def _update_failed(self, conn: AsyncConnection, job: Job, reply: Reply) -> None:
        usable = reply.body.get("instance_usable")
        state = "failed" if usable is False else job.request.get("previous_state", "ready")
        await self._finish(conn, job.op, "failed", reply.description)
        await self._set_target(conn, job, state=state)

    async def update_poll(self, job: Job) -> None:
        """Poll an async update."""
        reply = await self._poll(job)
        state = reply.body.get("state") if reply.verdict is Verdict.DONE else None
        if state == "in progress" and not self._past(job.op["deadline"]):
            return await self._wait_more(job, reply, reply.description)
        async with self._owned(job) as conn:
            if state == "succeeded":
                await self._apply_update(conn, job, reply)
            elif state == "failed" or self._past(job.op["deadline"]):
                await self._update_failed(conn, job, reply)
            else:
                await self._reschedule(
                    conn, job, self._backoff(job), description=f"polling: {reply.description}"
                )

    # -- deprovision / unbind ---------------------------------------------------------------

    async def delete_send(self, job: Job) -> None:
        """Send a deprovision or unbind."""
        reply = await self._send_delete(job)
        previous = job.request.get("previous_state", "ready")
        if reply.verdict is Verdict.RETRY:
            return await self._retry_send(job, reply, previous)
        async with self._owned(job) as conn:
            if reply.verdict in (Verdict.DONE, Verdict.GONE):
                await self._finish(conn, job.op, "succeeded", "deleted at the broker")
                await self._delete_target(conn, job)
            elif reply.verdict is Verdict.ACCEPTED:
                await self._accepted(conn, job, reply)
            elif reply.orphan_mitigation:
                await self._orphan_mitigation(conn, job, reply.description, then="delete")
            else:
                await self._finish(conn, job.op, "failed", reply.description)
                await self._set_target(conn, job, state=previous)

    async def _send_delete(self, job: Job) -> Reply:
        user = job.op["created_by"]
        if job.binding_id:
            return await self.platform.link.unbind(
                job.endpoint, job.instance_id, job.binding_id, job.service_id, job.plan_id, user
            )
        return await self.platform.link.deprovision(
            job.endpoint, job.instance_id, job.service_id, job.plan_id, user
        )

    async def delete_poll(self, job: Job) -> None:
        """Poll an async deprovision or unbind."""
        reply = await self._poll(job)
        state = reply.body.get("state") if reply.verdict is Verdict.DONE else None
        if state == "in progress" and not self._past(job.op["deadline"]):
            return await self._wait_more(job, reply, reply.description)
        async with self._owned(job) as conn:
            if state == "succeeded" or reply.verdict is Verdict.GONE:
                await self._finish(conn, job.op, "succeeded", "deleted at the broker")
                await self._delete_target(conn, job)
            elif state == "failed":
                # spec: Orphan Mitigation, row "200 with state failed" for deprovision/unbind.
                await self._orphan_mitigation(
                    conn, job, f"failed: {reply.description}", then="delete"
                )
            elif self._past(job.op["deadline"]):
                await self._orphan_mitigation(conn, job, "polling deadline passed", then="delete")
            else:
                await self._reschedule(
                    conn, job, self._backoff(job), description=f"polling: {reply.description}"
                )

    # -- bind -------------------------------------------------------------------------------

    async def bind_send(self, job: Job) -> None:
        """Send the bind request."""
        assert job.binding_id is not None
        reply = await self.platform.link.bind(
            job.endpoint,
            job.instance_id,
            job.binding_id,
            job.request["body"],
            job.op["created_by"],
        )
        if reply.verdict is Verdict.RETRY:
            return await self._retry_send(job, reply, "failed")
        async with self._owned(job) as conn:
            if reply.verdict is Verdict.DONE:
                await self._store_credentials(conn, job, reply)
            elif reply.verdict is Verdict.ACCEPTED:
                await self._accepted(conn, job, reply)
            elif reply.orphan_mitigation:
                await self._orphan_mitigation(conn, job, reply.description, then="keep")
            else:
                await self._finish(conn, job.op, "failed", reply.description)
                await self._set_target(conn, job, state="failed")

    async def _store_credentials(self, conn: AsyncConnection, job: Job, reply: Reply) -> None:
        credentials = reply.body.get("credentials") or {}
        await self._finish(conn, job.op, "succeeded", "bound")
        await self._set_target(
            conn, job, state="ready", credentials=self.platform.cipher.seal(credentials)
        )

    async def bind_poll(self, job: Job) -> None:
        """Poll an async bind."""
        await self._poll_create(job, ready={"state": "ready"})

    async def bind_fetch(self, job: Job) -> None:
        """Fetch the credentials of a binding created asynchronously."""
        assert job.binding_id is not None
        reply = await self.platform.link.fetch_binding(
            job.endpoint, job.instance_id, job.binding_id, job.op["created_by"]
        )
        async with self._owned(job) as conn:
            if reply.verdict is Verdict.DONE:
                await self._store_credentials(conn, job, reply)
            elif self._past(job.op["deadline"]):
                await self._orphan_mitigation(
                    conn, job, f"cannot fetch the binding: {reply.description}", then="keep"
                )
            else:
                await self._reschedule(
                    conn, job, self._backoff(job), description=f"fetching: {reply.description}"
                )

    # -- orphan mitigation ------------------------------------------------------------------

    async def mitigate_send(self, job: Job) -> None:
        """Delete what may be orphaned; keep trying until the broker confirms (spec)."""
        reply = await self._send_delete(job)
        async with self._owned(job) as conn:
            if reply.verdict in (Verdict.DONE, Verdict.GONE):
                await self._mitigated(conn, job)
            elif reply.verdict is Verdict.ACCEPTED:
                await self._reschedule(
                    conn,
                    job,
                    self._poll_delay(reply),
                    phase="poll",
                    broker_operation=reply.operation,
                    description="the broker is deleting it",
                )
            else:
                await self._mitigation_retry(conn, job, reply)

    async def mitigate_poll(self, job: Job) -> None:
        """Poll the deletion started by orphan mitigation."""
        reply = await self._poll(job)
        state = reply.body.get("state") if reply.verdict is Verdict.DONE else None
        async with self._owned(job) as conn:
            if state == "succeeded" or reply.verdict is Verdict.GONE:
                await self._mitigated(conn, job)
            elif state == "in progress":
                await self._reschedule(
                    conn, job, self._poll_delay(reply), description=reply.description
                )
            else:
                await self._mitigation_retry(conn, job, reply, phase="send")

    async def _mitigation_retry(
        self, conn: AsyncConnection, job: Job, reply: Reply, phase: str | None = None
    ) -> None:
        delay = self._backoff(job)
        values: dict[str, Any] = {
            "description": f"attempt {job.op['attempts']}: {reply.description}; "
            f"trying again in {delay:.0f}s"
        }
        if phase is not None:
            values.update(phase=phase, broker_operation=None)
        await self._reschedule(conn, job, delay, **values)

    async def _mitigated(self, conn: AsyncConnection, job: Job) -> None:
        await self._finish(conn, job.op, "succeeded", "the broker confirmed the deletion")
        if job.request.get("then") == "delete":
            await self._delete_target(conn, job)
        else:
            await self._set_target(conn, job, state="failed")


_STEPS: dict[tuple[str, str], Step] = {
    ("provision", "send"): Worker.provision_send,
    ("provision", "poll"): Worker.provision_poll,
    ("update", "send"): Worker.update_send,
    ("update", "poll"): Worker.update_poll,
    ("deprovision", "send"): Worker.delete_send,
    ("deprovision", "poll"): Worker.delete_poll,
    ("bind", "send"): Worker.bind_send,
    ("bind", "poll"): Worker.bind_poll,
    ("bind", "fetch"): Worker.bind_fetch,
    ("unbind", "send"): Worker.delete_send,
    ("unbind", "poll"): Worker.delete_poll,
    ("orphan_mitigation", "send"): Worker.mitigate_send,
    ("orphan_mitigation", "poll"): Worker.mitigate_poll,
}

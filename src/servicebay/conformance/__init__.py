"""The broker self-test behind ``bay broker check``: drives any OSB broker and reports conformance.

It speaks HTTP to the broker like a platform would (and, on purpose, like a careless one would),
so it works on brokers written with any library. It never imports ``servicebay.broker``: SDK and
self-test meet only on the wire. The run, in order:

0. credentials: a broker answering 401 to the credentials given ends the run there, with one
   failed ``auth.accepted`` check (every later check would fail for that one reason);
1. catalog: shape, unique names and ids, parameter schemas (draft-04 valid, ``$schema``,
   self-contained, < 64kB), maintenance_info versions;
2. headers and auth: the version header (missing/unsupported/malformed → 412, on every
   endpoint), 401 without or with wrong credentials, request identity echoed;
3. unknown ids and bad input: 410 on delete, 404 on fetch/poll, 400 for malformed, incomplete,
   unknown or out-of-schema requests — and none of them leaves a trace;
4. every plan of every service, concurrently: provision → fetch → update → bind → unbind →
   deprovision, sync or async (polling ``last_operation``), with idempotency (same → 200 and
   same body, different → 409, gone → 410), binding rotation and non-bindable plans.

Usage::

    report = await run_checks("http://127.0.0.1:8080", username="u", password="p")
    report.render(rich.console.Console())
    assert report.ok
"""

from __future__ import annotations

import asyncio

import httpx

from servicebay.conformance._input import check_bad_provisions, check_unknown_ids
from servicebay.conformance._lifecycle import PlanRun, Target, targets
from servicebay.conformance._probe import Probe
from servicebay.conformance._protocol import (
    check_auth,
    check_catalog,
    check_credentials,
    check_every_endpoint,
    check_request_identity,
    check_version_header,
    error_body_problem,
)
from servicebay.conformance._report import CheckResult, Outcome, Recorder, Report
from servicebay.conformance._samples import valid_sample

__all__ = ["CheckResult", "Outcome", "Report", "UnknownPlanError", "run_checks"]


class UnknownPlanError(ValueError):
    """A ``plans`` selector names no plan of the broker's catalog; the message lists its plans."""

    def __init__(self, selector: str, available: list[str]) -> None:
        super().__init__(
            f"no plan {selector!r} in the broker's catalog; its plans: "
            + (", ".join(available) or "none")
        )
        self.selector, self.available = selector, available


async def run_checks(
    url: str,
    *,
    username: str | None = None,
    password: str | None = None,
    bearer_token: str | None = None,
    plans: list[str] | None = None,
    poll_timeout: float = 120.0,
    request_timeout: float = 30.0,
    transport: httpx.AsyncBaseTransport | None = None,
) -> Report:
    """Run every check against the broker at ``url``; never raises for a broker's misbehaviour.

    ``plans`` limits the lifecycle checks to plans named ``plan`` or ``service/plan``; a selector
    matching no plan of the catalog raises `UnknownPlanError` before any other check runs.
    ``poll_timeout`` bounds polling when a plan declares no ``maximum_polling_duration``.
    ``transport`` lets tests reach an in-process app.
    """
    report = Report(url)
    client = httpx.AsyncClient(base_url=url, timeout=request_timeout, transport=transport)
    async with client:
        probe = Probe(client, username=username, password=password, bearer_token=bearer_token)
        try:
            await _run(probe, report, plans, poll_timeout)
        except httpx.HTTPError as exc:
            rec = Recorder()
            rec.check(
                "broker.reachable",
                "the broker answers HTTP",
                "API Overview",
                False,
                f"{type(exc).__name__}: {exc}",
            )
            report.results += rec.results
    return report


async def _run(probe: Probe, report: Report, plans: list[str] | None, poll_timeout: float) -> None:
    rec = Recorder()
    report.results = rec.results
    if not await check_credentials(probe, rec):
        return
    catalog = await check_catalog(probe, rec)
    everything = targets(catalog) if catalog is not None else []
    _require_known(plans or [], everything)
    first = _first_usable(everything)
    sample = None
    if first is not None:
        sample = first.provision_body(
            valid_sample(first.schema("service_instance", "create")) or {}
        )
    await check_version_header(probe, rec, sample)
    await check_auth(probe, rec, sample)
    await check_every_endpoint(probe, rec, first.ids if first is not None else None)
    await check_request_identity(probe, rec)
    if first is None:
        rec.skip("plans", "lifecycle of every plan", "Provisioning", "no usable catalog")
        return
    await check_unknown_ids(probe, first, rec)
    await check_bad_provisions(probe, first, rec)
    chosen = [t for t in everything if _selected(t, plans)]
    runs = [Recorder(prefix=f"plan[{t.label}].") for t in chosen]
    await asyncio.gather(
        *(
            PlanRun(probe, t, r, poll_timeout, everything).run()
            for t, r in zip(chosen, runs, strict=True)
        )
    )
    for run in runs:
        rec.results += run.results
    problems = [p for e in probe.exchanges if (p := error_body_problem(e))]
    rec.check(
        "errors.body",
        "error responses are JSON objects with non-empty error/description",
        "Service Broker Errors",
        not problems,
        "; ".join(problems[:3]),
        must=False,
    )


def _first_usable(candidates: list[Target]) -> Target | None:
    for target in candidates:
        if valid_sample(target.schema("service_instance", "create")) is not None:
            return target
    return None


def _require_known(selectors: list[str], everything: list[Target]) -> None:
    for selector in selectors:
        if everything and not any(_selected(t, [selector]) for t in everything):
            raise UnknownPlanError(selector, [t.label for t in everything])


def _selected(target: Target, plans: list[str] | None) -> bool:
    if not plans:
        return True
    return target.plan["name"] in plans or target.label in plans

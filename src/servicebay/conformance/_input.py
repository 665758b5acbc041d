"""Bad input and unknown ids: every malformed request gets its 4xx and changes nothing.

spec: Service Broker Errors — "an HTTP status code in the 4xx range MUST result in the Service
Broker's resources being semantically unchanged". Each rejected provision here uses a fresh
instance id; afterwards a delete of every one of those ids must answer 410 Gone.
"""

from __future__ import annotations

import uuid

from servicebay.conformance._lifecycle import DEPROVISION, FETCH_I, POLL_B, POLL_I, UNBIND, Target
from servicebay.conformance._probe import JSON, Exchange, Probe
from servicebay.conformance._report import Recorder
from servicebay.conformance._samples import invalid_sample, valid_sample

PROVISION = "Provisioning"
ERRORS = "Service Broker Errors"


def _fresh() -> str:
    return f"/v2/service_instances/conformance-{uuid.uuid4()}"


async def check_bad_provisions(probe: Probe, target: Target, rec: Recorder) -> None:
    """Malformed, incomplete, unknown and out-of-schema provisions answer 400 and create nothing."""
    schema = target.schema("service_instance", "create")
    good = target.provision_body(valid_sample(schema) or {})
    cases: list[tuple[str, str, JSON | None, bytes | None]] = [
        ("malformed_json", "a body that is not JSON", None, b'{"service_id": '),
        ("not_an_object", "a JSON array as body", None, b"[]"),
        ("missing_service_id", "no service_id", _without(good, "service_id"), None),
        ("empty_plan_id", "an empty plan_id", {**good, "plan_id": ""}, None),
        ("unknown_service_id", "an unknown service_id", {**good, "service_id": "no-such"}, None),
        ("unknown_plan_id", "an unknown plan_id", {**good, "plan_id": "no-such-plan"}, None),
        ("parameters_type", "parameters that are not an object", {**good, "parameters": "x"}, None),
    ]
    rejected: list[str] = []
    for case, what, body, raw in cases:
        path = _fresh()
        answer = await _put(probe, path, body, raw)
        rec.check(
            f"input.{case}",
            f"provision with {what} answers 400",
            PROVISION,
            answer.status == 400,
            answer.describe(),
        )
        rejected.append(path)
    invalid = invalid_sample(schema)
    if invalid is None:
        rec.skip("input.schema", "out-of-schema parameters → 400", PROVISION, "no schema bounds")
    else:
        path = _fresh()
        answer = await _put(probe, path, {**good, "parameters": invalid.parameters}, None)
        rec.check(
            "input.schema",
            f"parameters violating the plan's schema ({invalid.field}) answer 400",
            PROVISION,
            answer.status == 400,
            answer.describe(),
        )
        rec.check(
            "input.schema_names_field",
            "the 400 description names the offending field",
            ERRORS,
            invalid.field in answer.description,
            answer.description[:100],
            must=False,
        )
        rejected.append(path)
    info = target.plan.get("maintenance_info")
    if isinstance(info, dict):
        path = _fresh()
        answer = await _put(
            probe, path, {**good, "maintenance_info": {"version": "0.0.1-old"}}, None
        )
        rec.check(
            "input.maintenance_info",
            "a stale maintenance_info.version answers 422 MaintenanceInfoConflict",
            PROVISION,
            answer.status == 422 and answer.error_code == "MaintenanceInfoConflict",
            answer.describe(),
        )
        rejected.append(path)
    await _check_unchanged(probe, target, rec, rejected)


def _without(body: JSON, key: str) -> JSON:
    return {k: v for k, v in body.items() if k != key}


async def _put(probe: Probe, path: str, body: JSON | None, raw: bytes | None) -> Exchange:
    params = {"accepts_incomplete": "true"}
    if raw is not None:
        return await probe.send("PUT", path, params=params, content=raw)
    return await probe.send("PUT", path, params=params, body=body)


async def _check_unchanged(probe: Probe, target: Target, rec: Recorder, paths: list[str]) -> None:
    leaked = []
    for path in paths:
        answer = await probe.send("DELETE", path, params=target.ids)
        if answer.status != 410:
            leaked.append(path.rsplit("/", 1)[-1])
    rec.check(
        "input.unchanged",
        "no rejected provision left an instance behind (delete → 410)",
        ERRORS,
        not leaked,
        f"instances exist: {', '.join(leaked)}" if leaked else "",
    )


async def check_unknown_ids(probe: Probe, target: Target, rec: Recorder) -> None:
    """Deletes of unknown ids answer 410; fetches and polls of unknown ids answer 404."""
    base = _fresh()
    binding = f"{base}/service_bindings/conformance-{uuid.uuid4()}"
    answer = await probe.send("DELETE", base, params=target.ids)
    rec.check(
        "unknown.deprovision",
        "deprovisioning an unknown instance answers 410",
        DEPROVISION,
        answer.status == 410,
        answer.describe(),
    )
    answer = await probe.send("DELETE", binding, params=target.ids)
    rec.check(
        "unknown.unbind",
        "unbinding an unknown binding answers 410",
        UNBIND,
        answer.status == 410,
        answer.describe(),
    )
    answer = await probe.send("GET", base + "/last_operation", params=target.ids)
    rec.check(
        "unknown.last_operation",
        "last_operation of an unknown instance answers 404",
        POLL_I,
        answer.status == 404,
        answer.describe(),
    )
    answer = await probe.send("GET", binding + "/last_operation", params=target.ids)
    rec.check(
        "unknown.binding_last_operation",
        "last_operation of an unknown binding answers 404",
        POLL_B,
        answer.status == 404,
        answer.describe(),
    )
    if target.flag("instances_retrievable"):
        answer = await probe.send("GET", base, params=target.ids)
        rec.check(
            "unknown.fetch_instance",
            "fetching an unknown instance answers 404",
            FETCH_I,
            answer.status == 404,
            answer.describe(),
        )

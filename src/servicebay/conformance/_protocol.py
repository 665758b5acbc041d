"""Checks that need no instance: the catalog's shape and schemas, the version header, auth.

Runs first; the catalog it validates is what the lifecycle checks then walk plan by plan.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

import jsonschema
from jsonschema.exceptions import SchemaError

from servicebay.conformance._probe import JSON, Exchange, Probe
from servicebay.conformance._report import CREDENTIALS_CHECK, Recorder
from servicebay.osb import API_VERSION

CATALOG = "Catalog Management"
SERVICE_OBJ = "Service Offering Object"
PLAN_OBJ = "Service Plan Object"
SCHEMA_OBJ = "Input Parameters Schema Object"
VERSION = "API Version Header"
AUTH = "Platform to Service Broker Authentication"
ERRORS = "Service Broker Errors"

# spec: Maintenance Info Object — version MUST be semantic version 2.0.
_SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?$"
)
_CLI_FRIENDLY = re.compile(r"^[A-Za-z0-9.-]+$")
_SCHEMA_LIMIT = 64 * 1024


def _nonempty(obj: JSON, key: str) -> bool:
    return isinstance(obj.get(key), str) and bool(obj[key])


def _shape_problems(catalog: JSON) -> list[str]:
    """Every violation of the catalog's required fields and uniqueness rules."""
    services = catalog.get("services")
    if not isinstance(services, list):
        return ["`services` is not an array"]
    problems: list[str] = []
    ids: set[str] = set()
    names: set[str] = set()
    for s_index, service in enumerate(services):
        if not isinstance(service, dict):
            problems.append(f"services[{s_index}] is not an object")
            continue
        where = f"service {service.get('name') or s_index!r}"
        problems += [
            f"{where}: `{k}` must be a non-empty string"
            for k in ("name", "id", "description")
            if not _nonempty(service, k)
        ]
        if not isinstance(service.get("bindable"), bool):
            problems.append(f"{where}: `bindable` is required and must be a boolean")
        if service.get("name") in names:
            problems.append(f"{where}: name is not unique")
        if service.get("id") in ids:
            problems.append(f"{where}: id is not unique")
        names.add(str(service.get("name")))
        ids.add(str(service.get("id")))
        plans = service.get("plans")
        if not isinstance(plans, list) or not plans:
            problems.append(f"{where}: `plans` must contain at least one plan")
            continue
        plan_names: set[str] = set()
        for p_index, plan in enumerate(plans):
            if not isinstance(plan, dict):
                problems.append(f"{where}: plans[{p_index}] is not an object")
                continue
            pwhere = f"{where} plan {plan.get('name') or p_index!r}"
            problems += [
                f"{pwhere}: `{k}` must be a non-empty string"
                for k in ("id", "name", "description")
                if not _nonempty(plan, k)
            ]
            if plan.get("name") in plan_names:
                problems.append(f"{pwhere}: name is not unique within the service")
            if plan.get("id") in ids:
                problems.append(f"{pwhere}: id is not unique")
            plan_names.add(str(plan.get("name")))
            ids.add(str(plan.get("id")))
    return problems


def iter_schemas(catalog: JSON) -> list[tuple[str, Any]]:
    """Every ``parameters`` schema in the catalog, labelled ``service/plan/kind``."""
    found: list[tuple[str, Any]] = []
    for service in catalog.get("services", []):
        for plan in service.get("plans", []) if isinstance(service, dict) else []:
            schemas = plan.get("schemas") if isinstance(plan, dict) else None
            if not isinstance(schemas, dict):
                continue
            for owner, actions in schemas.items():
                for action, body in (actions or {}).items():
                    if isinstance(body, dict) and "parameters" in body:
                        label = f"{service.get('name')}/{plan.get('name')}/{owner}.{action}"
                        found.append((label, body["parameters"]))
    return found


def _external_refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        refs = [str(node["$ref"])] if not str(node.get("$ref", "#")).startswith("#") else []
        return refs + [r for v in node.values() for r in _external_refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _external_refs(v)]
    return []


def _schema_problems(label: str, schema: Any) -> list[str]:
    """Violations of the rules for input parameter schemas (spec: Input Parameters Schema)."""
    if not isinstance(schema, dict):
        return [f"{label}: not a JSON object"]
    problems: list[str] = []
    if "$schema" not in schema:
        problems.append(f"{label}: `$schema` is missing")
    try:
        jsonschema.validators.validator_for(
            schema, default=jsonschema.Draft4Validator
        ).check_schema(schema)
    except SchemaError as exc:
        problems.append(f"{label}: invalid schema: {exc.message}")
    problems += [f"{label}: external $ref {ref}" for ref in _external_refs(schema)]
    if len(json.dumps(schema).encode()) > _SCHEMA_LIMIT:
        problems.append(f"{label}: larger than 64kB")
    return problems


def _maintenance_problems(catalog: JSON) -> list[str]:
    problems = []
    for service in catalog.get("services", []):
        for plan in service.get("plans", []):
            info = plan.get("maintenance_info")
            if info is not None and not _SEMVER.match(str(info.get("version", ""))):
                problems.append(f"plan {plan.get('name')}: version {info.get('version')!r}")
    return problems


def _names_not_cli_friendly(catalog: JSON) -> list[str]:
    names = [s.get("name") for s in catalog.get("services", [])]
    names += [p.get("name") for s in catalog.get("services", []) for p in s.get("plans", [])]
    return [str(n) for n in names if not _CLI_FRIENDLY.match(str(n))]


async def check_catalog(probe: Probe, rec: Recorder) -> JSON | None:
    """Fetch and validate the catalog; returns it when it is usable for the lifecycle checks."""
    answer = await probe.send("GET", "/v2/catalog")
    body = answer.json_object
    if not rec.check(
        "catalog.fetch",
        "GET /v2/catalog answers 200 with a JSON object",
        CATALOG,
        answer.status == 200 and body is not None,
        answer.describe(),
    ):
        return None
    assert body is not None
    rec.check(
        "catalog.content_type",
        "responses carry Content-Type: application/json",
        "Content Type",
        answer.headers.get("Content-Type", "").startswith("application/json"),
        answer.headers.get("Content-Type", "(none)"),
        must=False,
    )
    problems = _shape_problems(body)
    rec.check(
        "catalog.shape",
        "required fields present, names and ids unique, every service has plans",
        f"{SERVICE_OBJ}, {PLAN_OBJ}",
        not problems,
        "; ".join(problems[:5]),
    )
    schema_problems = [p for label, s in iter_schemas(body) for p in _schema_problems(label, s)]
    rec.check(
        "catalog.schemas",
        "parameter schemas declare $schema, are valid, self-contained and < 64kB",
        SCHEMA_OBJ,
        not schema_problems,
        "; ".join(schema_problems[:5]) or f"{len(iter_schemas(body))} schemas",
    )
    maintenance = _maintenance_problems(body) if not problems else []
    rec.check(
        "catalog.maintenance_info",
        "maintenance_info.version is a semantic version",
        "Maintenance Info Object",
        not maintenance,
        "; ".join(maintenance),
    )
    unfriendly = _names_not_cli_friendly(body) if not problems else []
    rec.check(
        "catalog.cli_names",
        "service and plan names are CLI-friendly",
        "Catalog Management (Body)",
        not unfriendly,
        ", ".join(unfriendly),
        must=False,
    )
    return None if problems else body


async def check_version_header(probe: Probe, rec: Recorder, sample_provision: JSON | None) -> None:
    """Missing, malformed or unsupported ``X-Broker-API-Version`` is refused on every endpoint."""
    missing = await probe.send("GET", "/v2/catalog", version=None)
    if missing.status == 400:
        rec.check(
            "version.missing",
            "a request without the version header is refused with 412",
            VERSION,
            False,
            "400 (allowed by the spec; platforms and checkers expect 412)",
            must=False,
        )
    else:
        rec.check(
            "version.missing",
            "a request without the version header is refused with 412",
            VERSION,
            missing.status == 412,
            missing.describe(),
        )
    old = await probe.send("GET", "/v2/catalog", version="1.0")
    rec.check(
        "version.unsupported",
        "an unsupported version (1.0) is refused with 412",
        VERSION,
        old.status == 412,
        old.describe(),
    )
    rec.check(
        "version.message",
        f"the 412 description names the version to use ({API_VERSION[0]}.x)",
        VERSION,
        old.status == 412 and f"{API_VERSION[0]}." in old.description,
        old.description[:100],
        must=False,
    )
    garbage = await probe.send("GET", "/v2/catalog", version="banana")
    rec.check(
        "version.malformed",
        "a malformed version header is refused with 412",
        VERSION,
        garbage.status in (400, 412),
        garbage.describe(),
    )
    if sample_provision is None:
        return
    instance = f"conformance-{uuid.uuid4()}"
    put = await probe.send(
        "PUT", f"/v2/service_instances/{instance}", body=sample_provision, version=None
    )
    after = await _instance_exists(probe, instance, sample_provision)
    rec.check(
        "version.provision",
        "provision without the version header is refused (412) and creates nothing",
        VERSION,
        put.status in (400, 412) and not after,
        put.describe() + (" (instance was created)" if after else ""),
    )


async def _instance_exists(probe: Probe, instance: str, provision: JSON) -> bool:
    """True when the broker knows ``instance`` (a delete is not answered with 410)."""
    params = {"service_id": provision["service_id"], "plan_id": provision["plan_id"]}
    answer = await probe.send("DELETE", f"/v2/service_instances/{instance}", params=params)
    return answer.status != 410


async def check_credentials(probe: Probe, rec: Recorder) -> bool:
    """The broker accepts the credentials given; False (one failed check) when it answers 401.

    Every later check sends these credentials: refused, each would fail for that one reason.
    """
    answer = await probe.send("GET", "/v2/catalog")
    if answer.status != 401:
        return True
    given = "these credentials" if probe.has_credentials else "requests without credentials"
    rec.check(
        CREDENTIALS_CHECK,
        "the broker accepts the credentials given",
        AUTH,
        False,
        f"the broker refused {given} (401 on GET /v2/catalog)",
    )
    return False


async def check_auth(probe: Probe, rec: Recorder, sample_provision: JSON | None) -> None:
    """Requests without or with wrong credentials are refused with 401 (when auth is set)."""
    if not probe.has_credentials:
        rec.skip("auth.missing", "requests without credentials get 401", AUTH, "no credentials")
        return
    none = await probe.send("GET", "/v2/catalog", auth={})
    rec.check(
        "auth.missing",
        "a request without credentials is refused with 401",
        AUTH,
        none.status == 401,
        none.describe(),
    )
    wrong_basic = {"Authorization": "Basic " + "Y29uZm9ybWFuY2U6d3Jvbmc="}  # conformance:wrong
    bad = await probe.send("GET", "/v2/catalog", auth=wrong_basic)
    rec.check(
        "auth.wrong_password",
        "wrong basic credentials are refused with 401",
        AUTH,
        bad.status == 401,
        bad.describe(),
    )
    garbled = await probe.send("GET", "/v2/catalog", auth={"Authorization": "Basic %%%"})
    rec.check(
        "auth.garbled",
        "a garbled Authorization header is refused with 401 (not 500)",
        AUTH,
        garbled.status == 401,
        garbled.describe(),
    )
    wrong_bearer = await probe.send(
        "GET", "/v2/catalog", auth={"Authorization": "Bearer not-the-token"}
    )
    rec.check(
        "auth.wrong_bearer",
        "a wrong bearer token is refused with 401",
        AUTH,
        wrong_bearer.status == 401,
        wrong_bearer.describe(),
    )
    if probe.bearer_token is not None and probe.username is not None:
        ok = await probe.send(
            "GET", "/v2/catalog", auth={"Authorization": f"Bearer {probe.bearer_token}"}
        )
        rec.check(
            "auth.bearer",
            "the configured bearer token is accepted",
            AUTH,
            ok.status == 200,
            ok.describe(),
        )
    if sample_provision is not None:
        instance = f"conformance-{uuid.uuid4()}"
        put = await probe.send(
            "PUT", f"/v2/service_instances/{instance}", body=sample_provision, auth={}
        )
        created = await _instance_exists(probe, instance, sample_provision)
        rec.check(
            "auth.provision",
            "provision without credentials is refused (401) and creates nothing",
            AUTH,
            put.status == 401 and not created,
            put.describe() + (" (instance was created)" if created else ""),
        )


def _every_endpoint(ids: dict[str, str]) -> list[tuple[str, str, dict[str, str], JSON | None]]:
    """One request per OSB route, on ids nobody uses (the answer must not depend on them)."""
    base = f"/v2/service_instances/conformance-{uuid.uuid4()}"
    binding = f"{base}/service_bindings/conformance-{uuid.uuid4()}"
    return [
        ("PUT", base, {}, {**ids, "organization_guid": "o", "space_guid": "s"}),
        ("PATCH", base, {}, {"service_id": ids["service_id"]}),
        ("GET", base, {}, None),
        ("GET", base + "/last_operation", ids, None),
        ("DELETE", base, ids, None),
        ("PUT", binding, {}, dict(ids)),
        ("GET", binding, {}, None),
        ("GET", binding + "/last_operation", ids, None),
        ("DELETE", binding, ids, None),
    ]


async def check_every_endpoint(probe: Probe, rec: Recorder, ids: dict[str, str] | None) -> None:
    """The version and auth checks guard every route, before any lookup of the ids."""
    if ids is None:
        return
    for check, title, section, kwargs, expected in (
        (
            "version.every_endpoint",
            "every OSB route refuses a request without the version header (412)",
            VERSION,
            {"version": None},
            {400, 412},
        ),
        (
            "auth.every_endpoint",
            "every OSB route refuses a request without credentials (401)",
            AUTH,
            {"auth": {}},
            {401},
        ),
    ):
        if check.startswith("auth") and not probe.has_credentials:
            continue
        wrong = []
        for method, path, params, body in _every_endpoint(ids):
            sent: dict[str, Any] = dict(kwargs)
            if body is not None:
                sent["body"] = body
            answer = await probe.send(method, path, params=params, **sent)
            if answer.status not in expected:
                wrong.append(f"{method} {path.split('/', 3)[-1][:40]}… -> {answer.status}")
        rec.check(check, title, section, not wrong, "; ".join(wrong[:3]))


async def check_request_identity(probe: Probe, rec: Recorder) -> None:
    """The request identity header is echoed on the response (a SHOULD)."""
    identity, answer = await probe.with_request_identity("/v2/catalog")
    echoed = answer.headers.get("X-Broker-API-Request-Identity")
    rec.check(
        "headers.request_identity",
        "X-Broker-API-Request-Identity is echoed on the response",
        "Request Identity",
        echoed == identity,
        f"got {echoed!r}" if echoed != identity else "",
        must=False,
    )


def error_body_problem(answer: Exchange) -> str | None:
    """Why an error body breaks the spec's error shape, or None when it is fine."""
    if answer.status < 400:
        return None
    body = answer.json_object
    if body is None:
        return f"{answer.describe()}: body is not a JSON object"
    for key in ("error", "description"):
        if key in body and not (isinstance(body[key], str) and body[key]):
            return f"{answer.describe()}: `{key}` must be a non-empty string"
    return None

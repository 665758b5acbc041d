"""Lifecycle checks for one plan: provision → fetch → update → bind → unbind → deprovision.

Each step is checked as a platform would see it (status code, body, polling to a terminal state
when the broker answers 202), then replayed to check idempotency (same request → 200 and the
same body, credentials included; different request for the same id → 409; delete of what is
gone → 410). A step that fails stops the steps that depend on it; they are reported as skipped.
Every instance the run creates is deprovisioned at the end, even after a failure.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import jsonschema

from servicebay.conformance._probe import JSON, Exchange, PollResult, Probe, poll
from servicebay.conformance._report import Recorder
from servicebay.conformance._samples import valid_sample, variant_sample

PROVISION = "Provisioning"
FETCH_I = "Fetching a Service Instance"
UPDATE = "Updating a Service Instance"
BIND = "Binding"
FETCH_B = "Fetching a Service Binding"
UNBIND = "Unbinding"
DEPROVISION = "Deprovisioning"
POLL_I = "Polling Last Operation for Service Instances"
POLL_B = "Polling Last Operation for Service Bindings"
ASYNC = "Asynchronous Operations"
ROTATION = "Binding Rotation"


@dataclass(frozen=True)
class Target:
    """One plan of one service from the catalog, with the flags that decide what to check."""

    service: JSON
    plan: JSON

    @property
    def label(self) -> str:
        """``service/plan`` as shown in check ids."""
        return f"{self.service['name']}/{self.plan['name']}"

    @property
    def ids(self) -> dict[str, str]:
        """``service_id`` and ``plan_id`` as query parameters."""
        return {"service_id": self.service["id"], "plan_id": self.plan["id"]}

    @property
    def bindable(self) -> bool:
        """The plan's ``bindable``, falling back to the service's (spec: Service Plan Object)."""
        return bool(self.plan.get("bindable", self.service.get("bindable", False)))

    def flag(self, name: str) -> bool:
        """A service-level boolean flag such as ``instances_retrievable``."""
        return bool(self.service.get(name, False))

    def schema(self, owner: str, action: str) -> JSON | None:
        """The plan's parameters schema for ``owner`` (service_instance|service_binding)."""
        schemas = self.plan.get("schemas") or {}
        found = ((schemas.get(owner) or {}).get(action) or {}).get("parameters")
        return found if isinstance(found, dict) else None

    def provision_body(self, parameters: JSON) -> JSON:
        """A complete provision request, with a vendor extension field the broker must ignore."""
        return {
            **self.ids,
            "organization_guid": "conformance-org",
            "space_guid": "conformance-space",
            "context": {
                "platform": "conformance",
                "organization_guid": "conformance-org",
                "space_guid": "conformance-space",
            },
            "parameters": parameters,
            # spec: Vendor Extension Fields — receivers MUST ignore unknown fields.
            "x_conformance_extension": {"ignore": "me"},
        }

    def bind_body(self, parameters: JSON) -> JSON:
        """A complete bind request for an app."""
        app = "conformance-app"
        return {
            **self.ids,
            "app_guid": app,
            "bind_resource": {"app_guid": app},
            "context": {"platform": "conformance"},
            "parameters": parameters,
        }


def _same_except_operation(a: JSON | None, b: JSON | None) -> bool:
    strip = {"operation"}
    return {k: v for k, v in (a or {}).items() if k not in strip} == {
        k: v for k, v in (b or {}).items() if k not in strip
    }


class PlanRun:
    """Runs the lifecycle checks of one plan, recording into ``rec``."""

    def __init__(
        self, probe: Probe, target: Target, rec: Recorder, poll_timeout: float, plans: list[Target]
    ) -> None:
        self.probe, self.t, self.rec = probe, target, rec
        self.plans = plans
        duration = target.plan.get("maximum_polling_duration")
        self.poll_timeout = float(duration) if isinstance(duration, int) else poll_timeout
        self.instance = f"conformance-{uuid.uuid4()}"
        self.base = f"/v2/service_instances/{self.instance}"
        self.provisioned = False

    async def run(self) -> None:
        """All checks for the plan; cleans up whatever it created."""
        parameters = valid_sample(self.t.schema("service_instance", "create"))
        if parameters is None:
            self.rec.skip(
                "provision", "lifecycle", PROVISION, "no valid parameters derivable from schema"
            )
            return
        try:
            if await self._provision(parameters):
                await self._fetch_instance()
                await self._update()
                if self.t.bindable:
                    await self._bindings()
                else:
                    await self._bind_refused()
                await self._deprovision()
        finally:
            if self.provisioned:
                await self.probe.send(
                    "DELETE", self.base, params={**self.t.ids, "accepts_incomplete": "true"}
                )

    # -- polling -----------------------------------------------------------------------------

    async def _poll(self, path: str, answer: Exchange, *, deleting: bool = False) -> PollResult:
        params = dict(self.t.ids)
        body = answer.json_object or {}
        if isinstance(body.get("operation"), str):
            params["operation"] = body["operation"]
        return await poll(
            self.probe,
            path + "/last_operation",
            params,
            deadline_s=self.poll_timeout,
            deleting=deleting,
        )

    def _check_poll(self, step: str, result: PollResult, section: str, ok_states: set[str]) -> bool:
        detail = f"{result.state} after {result.polls} polls"
        if result.descriptions:
            detail += f"; last description {result.descriptions[-1][:60]!r}"
        if result.problem:
            detail += f"; {result.problem}"
        return self.rec.check(
            f"{step}.poll",
            f"last_operation reaches {' or '.join(sorted(ok_states))}",
            section,
            result.state in ok_states,
            detail,
        )

    # -- provision ---------------------------------------------------------------------------

    async def _provision(self, parameters: JSON) -> bool:
        body = self.t.provision_body(parameters)
        first = await self.probe.send(
            "PUT", self.base, params={"accepts_incomplete": "true"}, body=body
        )
        self.provisioned = first.status in (200, 201, 202)
        if not self.rec.check(
            "provision",
            "a new instance (request with a vendor extension field) answers 201 or 202",
            PROVISION,
            first.status in (201, 202) and first.json_object is not None,
            first.describe(),
        ):
            return False
        if first.status == 202:
            await self._async_extras(body, first)
            result = await self._poll(self.base, first)
            if not self._check_poll("provision", result, POLL_I, {"succeeded"}):
                return False
        again = await self.probe.send(
            "PUT", self.base, params={"accepts_incomplete": "true"}, body=body
        )
        # A sync 201 and its repeat must match; after a 202 the repeat is compared with a
        # second repeat (the 202 carried no final body), and dashboard_url is checked apart.
        reference = (
            first
            if first.status == 201
            else await self.probe.send(
                "PUT", self.base, params={"accepts_incomplete": "true"}, body=body
            )
        )
        same = _same_except_operation(reference.json_object, again.json_object)
        self.rec.check(
            "provision.idempotent",
            "the same provision again answers 200 with the same body",
            PROVISION,
            again.status == 200 and same,
            again.describe() + ("" if same else " (body differs)"),
        )
        final_url = (again.json_object or {}).get("dashboard_url")
        if first.status == 202 and final_url is not None:
            initial = (first.json_object or {}).get("dashboard_url")
            self.rec.check(
                "provision.dashboard_url",
                "the dashboard_url is already in the initial 202 response",
                f"{PROVISION} (Body: dashboard_url)",
                initial == final_url,
                f"202 had {initial!r}, later answers have a dashboard_url"
                if initial != final_url
                else "",
            )
        await self._provision_conflict(parameters)
        return True

    async def _provision_conflict(self, parameters: JSON) -> None:
        other = sibling(self.t, self.plans, parameters)
        if other is not None:
            changed = self.t.provision_body(parameters)
            changed["plan_id"] = other.plan["id"]
            how = f"plan {other.plan['name']}"
        else:
            variant = variant_sample(self.t.schema("service_instance", "create"))
            if variant is None:
                self.rec.skip("provision.conflict", "different provision → 409", PROVISION, "")
                return
            changed, how = self.t.provision_body(variant), "other parameters"
        answer = await self.probe.send(
            "PUT", self.base, params={"accepts_incomplete": "true"}, body=changed
        )
        self.rec.check(
            "provision.conflict",
            f"a different provision for the same id ({how}) answers 409",
            PROVISION,
            answer.status == 409,
            answer.describe(),
        )

    async def _async_extras(self, body: JSON, first: Exchange) -> None:
        """While an async provision runs: retry → 202 same operation; sync-only → AsyncRequired."""
        retry = await self.probe.send(
            "PUT", self.base, params={"accepts_incomplete": "true"}, body=body
        )
        same_op = (retry.json_object or {}).get("operation") == (first.json_object or {}).get(
            "operation"
        )
        self.rec.check(
            "provision.retry_in_progress",
            "the same provision while in progress answers 202 with the same operation",
            PROVISION,
            (retry.status == 202 and same_op) or retry.status == 200,
            retry.describe(),
        )
        if self.t.flag("instances_retrievable"):
            before = await self.probe.send("GET", self.base + "/last_operation", params=self.t.ids)
            fetched = await self.probe.send("GET", self.base)
            if (before.json_object or {}).get("state") == "in progress":
                self.rec.check(
                    "fetch_instance.in_progress",
                    "fetching an instance still being provisioned answers 404",
                    FETCH_I,
                    fetched.status == 404,
                    fetched.describe(),
                )
        other = f"/v2/service_instances/conformance-{uuid.uuid4()}"
        sync_only = await self.probe.send("PUT", other, body=body)
        if sync_only.status in (200, 201):
            await self.probe.send("DELETE", other, params=self.t.ids)
        self.rec.check(
            "provision.async_required",
            "without accepts_incomplete an async-only plan answers 422 AsyncRequired",
            ASYNC,
            sync_only.status in (200, 201)
            or (sync_only.status == 422 and sync_only.error_code == "AsyncRequired"),
            sync_only.describe(),
        )

    # -- fetch and update --------------------------------------------------------------------

    async def _fetch_instance(self) -> None:
        if not self.t.flag("instances_retrievable"):
            return
        answer = await self.probe.send("GET", self.base, params=self.t.ids)
        body = answer.json_object or {}
        matches = body.get("service_id") in (None, self.t.service["id"]) and body.get(
            "plan_id"
        ) in (None, self.t.plan["id"])
        self.rec.check(
            "fetch_instance",
            "fetching the provisioned instance answers 200 with its service and plan",
            FETCH_I,
            answer.status == 200 and matches,
            answer.describe(),
        )

    async def _update(self) -> None:
        schema = self.t.schema("service_instance", "update")
        body: JSON = {**self.t.ids, "context": {"platform": "conformance"}}
        if schema is not None:
            parameters = valid_sample(schema)
            if parameters is None:
                self.rec.skip("update", "update answers 200/202", UPDATE, "no valid parameters")
                return
            body["parameters"] = parameters
        # Updating is a MUST only where the catalog offers it (plan changes, an update schema,
        # context updates); elsewhere a broker may not implement the endpoint at all.
        offered = (
            bool(self.t.plan.get("plan_updateable", self.t.flag("plan_updateable")))
            or schema is not None
            or self.t.flag("allow_context_updates")
        )
        await self._bad_updates(must=offered)
        answer = await self.probe.send(
            "PATCH", self.base, params={"accepts_incomplete": "true"}, body=body
        )
        if not self.rec.check(
            "update",
            "an update of the instance answers 200 or 202",
            UPDATE,
            answer.status in (200, 202) and answer.json_object is not None,
            answer.describe(),
            must=offered,
        ):
            return
        if answer.status == 202:
            result = await self._poll(self.base, answer)
            self._check_poll("update", result, POLL_I, {"succeeded"})

    async def _bad_updates(self, *, must: bool) -> None:
        """Malformed updates and unknown plans answer 400 and leave the instance as it was."""
        params = {"accepts_incomplete": "true"}
        broken = await self.probe.send("PATCH", self.base, params=params, content=b"{")
        self.rec.check(
            "update.malformed_json",
            "an update body that is not JSON answers 400",
            UPDATE,
            broken.status == 400,
            broken.describe(),
            must=must,
        )
        unknown = await self.probe.send(
            "PATCH", self.base, params=params, body={**self.t.ids, "plan_id": "no-such-plan"}
        )
        self.rec.check(
            "update.unknown_plan_id",
            "an update to an unknown plan_id answers 400",
            UPDATE,
            unknown.status == 400,
            unknown.describe(),
            must=must,
        )
        if self.t.flag("instances_retrievable"):
            fetched = await self.probe.send("GET", self.base, params=self.t.ids)
            plan = (fetched.json_object or {}).get("plan_id", self.t.plan["id"])
            self.rec.check(
                "update.rejected_unchanged",
                "rejected updates leave the instance on its plan",
                UPDATE,
                fetched.status == 200 and plan == self.t.plan["id"],
                fetched.describe(),
            )

    # -- bindings ----------------------------------------------------------------------------

    async def _bind(self, binding: str, body: JSON) -> tuple[Exchange, JSON | None]:
        """Create ``binding``; returns the first answer and the binding as finally seen."""
        path = f"{self.base}/service_bindings/{binding}"
        answer = await self.probe.send(
            "PUT", path, params={"accepts_incomplete": "true"}, body=body
        )
        if answer.status != 202:
            return answer, answer.json_object if answer.status in (200, 201) else None
        result = await self._poll(path, answer)
        if not self._check_poll("bind", result, POLL_B, {"succeeded"}):
            return answer, None
        fetched = await self.probe.send("GET", path, params=self.t.ids)
        return answer, fetched.json_object if fetched.status == 200 else None

    async def _bindings(self) -> None:
        binding = f"conformance-{uuid.uuid4()}"
        path = f"{self.base}/service_bindings/{binding}"
        parameters = valid_sample(self.t.schema("service_binding", "create"))
        if parameters is None:
            self.rec.skip("bind", "bind answers 201/202", BIND, "no valid bind parameters")
            return
        body = self.t.bind_body(parameters)
        first, seen = await self._bind(binding, body)
        credentials = (seen or {}).get("credentials")
        if not self.rec.check(
            "bind",
            "a new binding answers 201 (or 202, then fetch) with credentials as an object",
            BIND,
            first.status in (201, 202)
            and seen is not None
            and (credentials is None or isinstance(credentials, dict)),
            first.describe(),
        ):
            return
        again = await self.probe.send("PUT", path, params={"accepts_incomplete": "true"}, body=body)
        same = (again.json_object or {}).get("credentials") == credentials
        self.rec.check(
            "bind.idempotent",
            "the same bind again answers 200 with the same credentials",
            BIND,
            again.status == 200 and same,
            again.describe() + ("" if same else " (credentials differ from the first answer)"),
        )
        await self._bind_conflict(path)
        await self._bad_binds()
        if self.t.flag("bindings_retrievable"):
            fetched = await self.probe.send("GET", path, params=self.t.ids)
            same = (fetched.json_object or {}).get("credentials") == credentials
            self.rec.check(
                "fetch_binding",
                "fetching the binding answers 200 with the credentials it was created with",
                FETCH_B,
                fetched.status == 200 and same,
                fetched.describe() + ("" if same else " (credentials differ)"),
            )
        if self.t.plan.get("binding_rotatable"):
            await self._rotate(binding, parameters)
        await self._unbind(path)

    async def _bad_binds(self) -> None:
        """Malformed and unknown-plan binds answer 400 and create no binding."""
        params = {"accepts_incomplete": "true"}
        leaked = []
        cases: list[tuple[str, str, JSON | None, bytes | None]] = [
            ("bind.malformed_json", "a bind body that is not JSON", None, b"{"),
            (
                "bind.unknown_plan_id",
                "a bind with an unknown plan_id",
                {**self.t.bind_body({}), "plan_id": "no-such-plan"},
                None,
            ),
            (
                "bind.missing_service_id",
                "a bind without service_id",
                {k: v for k, v in self.t.bind_body({}).items() if k != "service_id"},
                None,
            ),
        ]
        for check, what, body, raw in cases:
            path = f"{self.base}/service_bindings/conformance-{uuid.uuid4()}"
            if raw is not None:
                answer = await self.probe.send("PUT", path, params=params, content=raw)
            else:
                answer = await self.probe.send("PUT", path, params=params, body=body)
            self.rec.check(
                check, f"{what} answers 400", BIND, answer.status == 400, answer.describe()
            )
            gone = await self.probe.send("DELETE", path, params=self.t.ids)
            if gone.status != 410:
                leaked.append(path.rsplit("/", 1)[-1])
        self.rec.check(
            "bind.rejected_unchanged",
            "rejected binds leave no binding (delete → 410)",
            BIND,
            not leaked,
            ", ".join(leaked),
        )

    async def _bind_conflict(self, path: str) -> None:
        variant = variant_sample(self.t.schema("service_binding", "create"))
        if variant is None:
            self.rec.skip("bind.conflict", "different bind → 409", BIND, "no variant parameters")
            return
        answer = await self.probe.send(
            "PUT", path, params={"accepts_incomplete": "true"}, body=self.t.bind_body(variant)
        )
        self.rec.check(
            "bind.conflict",
            "a different bind for the same binding id answers 409",
            BIND,
            answer.status == 409,
            answer.describe(),
        )

    async def _rotate(self, predecessor: str, parameters: JSON) -> None:
        successor = f"conformance-{uuid.uuid4()}"
        body: JSON = {**self.t.ids, "predecessor_binding_id": predecessor}
        first, seen = await self._bind(successor, body)
        old = await self.probe.send(
            "GET", f"{self.base}/service_bindings/{predecessor}", params=self.t.ids
        )
        both_valid = seen is not None and (
            not self.t.flag("bindings_retrievable") or old.status == 200
        )
        self.rec.check(
            "bind.rotate",
            "a successor binding (predecessor_binding_id) is created; both stay valid",
            ROTATION,
            first.status in (201, 202) and both_valid,
            first.describe(),
        )
        if first.status in (200, 201, 202):
            await self._unbind(f"{self.base}/service_bindings/{successor}", record=False)

    async def _unbind(self, path: str, *, record: bool = True) -> None:
        params = {**self.t.ids, "accepts_incomplete": "true"}
        answer = await self.probe.send("DELETE", path, params=params)
        if not record:
            if answer.status == 202:
                await self._poll(path, answer, deleting=True)
            return
        if not self.rec.check(
            "unbind",
            "unbinding answers 200 (or 202, then polling ends)",
            UNBIND,
            answer.status in (200, 202) and answer.json_object is not None,
            answer.describe(),
        ):
            return
        if answer.status == 202:
            result = await self._poll(path, answer, deleting=True)
            self._check_poll("unbind", result, POLL_B, {"succeeded", "gone"})
        gone = await self.probe.send("DELETE", path, params=params)
        self.rec.check(
            "unbind.gone",
            "unbinding a binding that no longer exists answers 410",
            UNBIND,
            gone.status == 410,
            gone.describe(),
        )
        if self.t.flag("bindings_retrievable"):
            fetched = await self.probe.send("GET", path, params=self.t.ids)
            self.rec.check(
                "fetch_binding.gone",
                "fetching an unbound binding answers 404",
                FETCH_B,
                fetched.status == 404,
                fetched.describe(),
            )

    async def _bind_refused(self) -> None:
        path = f"{self.base}/service_bindings/conformance-{uuid.uuid4()}"
        answer = await self.probe.send(
            "PUT", path, params={"accepts_incomplete": "true"}, body=self.t.bind_body({})
        )
        self.rec.check(
            "bind.not_bindable",
            "binding to a plan that is not bindable is refused with 400",
            BIND,
            answer.status == 400,
            answer.describe(),
        )
        if answer.status in (200, 201, 202):
            await self.probe.send("DELETE", path, params=self.t.ids)

    # -- deprovision -------------------------------------------------------------------------

    async def _deprovision(self) -> None:
        params = {**self.t.ids, "accepts_incomplete": "true"}
        partial = {"service_id": self.t.service["id"], "accepts_incomplete": "true"}
        refused = await self.probe.send("DELETE", self.base, params=partial)
        self.rec.check(
            "deprovision.missing_plan_id",
            "deprovisioning without the plan_id query parameter answers 400",
            DEPROVISION,
            refused.status == 400,
            refused.describe(),
        )
        if refused.status in (200, 202):
            self.provisioned = False  # the broker deleted it anyway; nothing left to check
            return
        answer = await self.probe.send("DELETE", self.base, params=params)
        if not self.rec.check(
            "deprovision",
            "deprovisioning answers 200 (or 202, then polling ends)",
            DEPROVISION,
            answer.status in (200, 202) and answer.json_object is not None,
            answer.describe(),
        ):
            return
        if answer.status == 202:
            result = await self._poll(self.base, answer, deleting=True)
            if not self._check_poll("deprovision", result, POLL_I, {"succeeded", "gone"}):
                return
        self.provisioned = False
        gone = await self.probe.send("DELETE", self.base, params=params)
        self.rec.check(
            "deprovision.gone",
            "deprovisioning an instance that no longer exists answers 410",
            DEPROVISION,
            gone.status == 410,
            gone.describe(),
        )
        if self.t.flag("instances_retrievable"):
            fetched = await self.probe.send("GET", self.base, params=self.t.ids)
            self.rec.check(
                "fetch_instance.gone",
                "fetching a deprovisioned instance answers 404",
                FETCH_I,
                fetched.status == 404,
                fetched.describe(),
            )


def targets(catalog: JSON) -> list[Target]:
    """Every plan of every service, in catalog order."""
    return [Target(s, p) for s in catalog.get("services", []) for p in s.get("plans", [])]


def sibling(target: Target, all_targets: list[Target], parameters: JSON) -> Target | None:
    """Another plan of the same service accepting ``parameters`` (to provoke a 409), if any."""
    for other in all_targets:
        if other.service["id"] != target.service["id"] or other.plan["id"] == target.plan["id"]:
            continue
        schema = other.schema("service_instance", "create")
        if schema is None or jsonschema.Draft4Validator(schema).is_valid(parameters):
            return other
    return None

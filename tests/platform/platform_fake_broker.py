"""A fake OSB broker that misbehaves on purpose, per plan, for the platform's error-path tests.

Plans (service ``fake``):
- ``sync``: 201 provision, 200 deprovision, 201 bind with credentials, 200 unbind.
- ``async``: 202 provision/deprovision/bind/unbind; ``last_operation`` is "in progress" until
  ``async_seconds`` passed since the request, then "succeeded".
- ``async-fail``: 202 provision, then ``last_operation`` "failed".
- ``error500``: provision and bind answer 500.
- ``slow``: provision and bind sleep longer than the platform's timeout.
- ``malformed201`` / ``malformed202``: provision and bind answer 201/202 with a malformed body.
- ``reject``: provision answers 400.
- ``param``: schema ``size`` 1..10 (default 1), ``name`` string, ``secret`` writeOnly; binding
  schema ``token`` x-sensitive.
With ``quote_parameters`` set the fake quotes the parameters it was sent back in its errors, as a
careless broker might: ``"reject"`` answers 400 to provision, update and bind; ``"async"`` accepts
a provision (202) and fails it in ``last_operation``.
Deletes of an instance/binding fail with 500 ``fail_deletes`` times before succeeding, so orphan
mitigation must retry. Every request is recorded in ``FakeBroker.calls``; ``GET /_fake/stats``
serves the counts when run as a process (``python platform_fake_broker.py PORT``).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

SERVICE_ID = "fa4e0000-0000-4000-8000-000000000001"
PLANS = [
    "sync",
    "async",
    "async-fail",
    "error500",
    "slow",
    "malformed201",
    "malformed202",
    "reject",
    "param",
]
USERNAME, PASSWORD = "broker-user", "broker-pass-9f8e7d"


def plan_id(name: str) -> str:
    return f"fa4e0000-0000-4000-8000-1{PLANS.index(name):011d}"


def catalog() -> dict[str, Any]:
    plans = []
    for name in PLANS:
        plan: dict[str, Any] = {"id": plan_id(name), "name": name, "description": f"{name} plan"}
        if name == "param":
            plan["schemas"] = {
                "service_instance": {
                    "create": {
                        "parameters": {
                            "$schema": "http://json-schema.org/draft-04/schema#",
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "size": {
                                    "type": "integer",
                                    "minimum": 1,
                                    "maximum": 10,
                                    "default": 1,
                                },
                                "name": {"type": "string"},
                                "secret": {"type": "string", "writeOnly": True},
                            },
                        }
                    }
                },
                "service_binding": {
                    "create": {
                        "parameters": {
                            "$schema": "http://json-schema.org/draft-04/schema#",
                            "type": "object",
                            "properties": {"token": {"type": "string", "x-sensitive": True}},
                        }
                    }
                },
            }
        plans.append(plan)
    return {
        "services": [
            {
                "id": SERVICE_ID,
                "name": "fake",
                "description": "a broker that misbehaves on purpose",
                "bindable": True,
                "plans": plans,
            }
        ]
    }


@dataclass
class FakeBroker:
    """The fake's state: what exists, what was asked, how to misbehave."""

    async_seconds: float = 0.3
    slow_seconds: float = 3.0
    fail_deletes: int = 2
    bind_mode: str | None = None
    instances: dict[str, dict[str, Any]] = field(default_factory=dict)
    bindings: dict[str, dict[str, Any]] = field(default_factory=dict)
    operations: dict[str, tuple[float, str]] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)
    delete_failures: Counter[str] = field(default_factory=Counter)
    provisions: Counter[str] = field(default_factory=Counter)
    identities: list[str] = field(default_factory=list)
    quote_parameters: str | None = None

    def count(self, method: str, fragment: str = "") -> int:
        return sum(1 for m, p in self.calls if m == method and fragment in p)

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v2/catalog", self._catalog, methods=["GET"]),
                Route(
                    "/v2/service_instances/{iid}",
                    self._instance,
                    methods=["PUT", "PATCH", "DELETE"],
                ),
                Route("/v2/service_instances/{iid}/last_operation", self._last, methods=["GET"]),
                Route(
                    "/v2/service_instances/{iid}/service_bindings/{bid}",
                    self._binding,
                    methods=["PUT", "DELETE", "GET"],
                ),
                Route(
                    "/v2/service_instances/{iid}/service_bindings/{bid}/last_operation",
                    self._last,
                    methods=["GET"],
                ),
                Route("/_fake/stats", self._stats, methods=["GET"]),
            ]
        )

    def _authorized(self, request: Request) -> bool:
        import base64

        expected = base64.b64encode(f"{USERNAME}:{PASSWORD}".encode()).decode()
        return request.headers.get("authorization") == f"Basic {expected}"

    async def _catalog(self, request: Request) -> Response:
        if not self._authorized(request):
            return JSONResponse({"description": "unauthorized"}, status_code=401)
        return JSONResponse(catalog())

    async def _stats(self, request: Request) -> Response:
        return JSONResponse(
            {
                "provisions": dict(self.provisions),
                "instances": len(self.instances),
                "calls": len(self.calls),
            }
        )

    def _plan(self, plan_uuid: str | None) -> str:
        for name in PLANS:
            if plan_id(name) == plan_uuid:
                return name
        return "sync"

    async def _misbehave(self, plan: str, kind: str) -> Response | None:
        if plan == "error500":
            return JSONResponse({"description": "boom"}, status_code=500)
        if plan == "slow":
            await asyncio.sleep(self.slow_seconds)
            return JSONResponse({}, status_code=201)
        if plan == "malformed201":
            return Response(b"this is not json", status_code=201)
        if plan == "malformed202":
            return JSONResponse({"operation": 12345}, status_code=202)
        if plan == "reject" and kind == "provision":
            return JSONResponse({"description": "no such thing"}, status_code=400)
        return None

    def _quoting(self, body: dict[str, Any]) -> Response | None:
        if self.quote_parameters != "reject":
            return None
        text = f"refused parameters {json.dumps(body.get('parameters'))}"
        return JSONResponse({"error": "Refused", "description": text}, status_code=400)

    async def _instance(self, request: Request) -> Response:
        if not self._authorized(request):
            return JSONResponse({"description": "unauthorized"}, status_code=401)
        iid = request.path_params["iid"]
        self.calls.append((request.method, request.url.path))
        self.identities.append(request.headers.get("x-broker-api-originating-identity", ""))
        if request.method in ("PUT", "PATCH"):
            quoted = self._quoting(await request.json())
            if quoted is not None:
                return quoted
        if request.method == "PUT":
            body = await request.json()
            plan = self._plan(body.get("plan_id"))
            self.provisions[iid] += 1
            if plan in ("error500", "slow", "malformed201", "malformed202"):
                self.instances[iid] = {"plan": plan, "body": body}  # the would-be orphan
            bad = await self._misbehave(plan, "provision")
            if bad is not None:
                return bad
            self.instances[iid] = {"plan": plan, "body": body}
            if self.quote_parameters == "async":
                self.operations[iid] = (time.monotonic(), "quote")
                return JSONResponse({"operation": f"op-{iid}"}, status_code=202)
            if plan in ("async", "async-fail"):
                self.operations[iid] = (time.monotonic(), plan)
                return JSONResponse({"operation": f"op-{iid}"}, status_code=202)
            return JSONResponse({}, status_code=201)
        if request.method == "PATCH":
            body = await request.json()
            if iid not in self.instances:
                return JSONResponse({"description": "no such instance"}, status_code=404)
            self.instances[iid]["updates"] = [*self.instances[iid].get("updates", []), body]
            return JSONResponse({}, status_code=200)
        # DELETE
        if iid not in self.instances:
            return JSONResponse({}, status_code=410)
        if self.delete_failures[iid] < self.fail_deletes:
            self.delete_failures[iid] += 1
            return JSONResponse({"description": "try again"}, status_code=500)
        plan = self.instances[iid]["plan"]
        if plan == "async":
            self.operations[iid] = (time.monotonic(), "async-delete")
            return JSONResponse({"operation": f"del-{iid}"}, status_code=202)
        del self.instances[iid]
        return JSONResponse({}, status_code=200)

    async def _last(self, request: Request) -> Response:
        key = request.path_params.get("bid") or request.path_params["iid"]
        self.calls.append(("GET", request.url.path))
        started, plan = self.operations.get(key, (0.0, "gone"))
        if plan == "gone":
            return JSONResponse({}, status_code=410)
        if time.monotonic() - started < self.async_seconds:
            return JSONResponse(
                {"state": "in progress", "description": "working on it"},
                headers={"Retry-After": "0"},
            )
        if plan == "async-fail":
            return JSONResponse({"state": "failed", "description": "it broke"})
        if plan == "quote":
            sent = json.dumps(self.instances[key]["body"].get("parameters"))
            return JSONResponse({"state": "failed", "description": f"cannot use {sent}"})
        if plan == "async-delete":
            self.instances.pop(key, None)
            self.bindings.pop(key, None)
            del self.operations[key]
            return JSONResponse({}, status_code=410)
        return JSONResponse({"state": "succeeded", "description": "done"})

    async def _binding(self, request: Request) -> Response:
        iid, bid = request.path_params["iid"], request.path_params["bid"]
        self.calls.append((request.method, request.url.path))
        if request.method == "GET":
            found = self.bindings.get(bid)
            if found is None:
                return JSONResponse({}, status_code=404)
            return JSONResponse({"credentials": found["credentials"]})
        if request.method == "PUT":
            body = await request.json()
            if (quoted := self._quoting(body)) is not None:
                return quoted
            plan = self.bind_mode or self._plan(body.get("plan_id"))
            credentials = {"uri": f"fake://{bid[:8]}:pw-{bid}@fake", "password": f"pw-{bid}"}
            self.bindings[bid] = {"instance": iid, "plan": plan, "credentials": credentials}
            bad = await self._misbehave(plan, "bind")
            if bad is not None:
                return bad
            if plan in ("async", "async-fail"):
                self.operations[bid] = (time.monotonic(), plan)
                return JSONResponse({"operation": f"op-{bid}"}, status_code=202)
            return JSONResponse({"credentials": credentials}, status_code=201)
        if bid not in self.bindings:
            return JSONResponse({}, status_code=410)
        if self.delete_failures[bid] < self.fail_deletes:
            self.delete_failures[bid] += 1
            return JSONResponse({"description": "try again"}, status_code=500)
        del self.bindings[bid]
        return JSONResponse({}, status_code=200)


if __name__ == "__main__":
    import uvicorn

    fake = FakeBroker(
        async_seconds=float(sys.argv[2]) if len(sys.argv) > 2 else 0.3,
        fail_deletes=0,
    )
    uvicorn.run(fake.app(), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")

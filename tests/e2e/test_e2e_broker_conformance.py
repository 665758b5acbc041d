"""The sandbox broker served for real (`bay broker serve` subprocess) passes the self-test."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest
from cryptography.fernet import Fernet

from servicebay.conformance import Outcome, run_checks
from servicebay.testing import serve_broker

pytestmark = pytest.mark.e2e
SANDBOX = "servicebay.examples.sandbox:broker"


@pytest.fixture
def postgres_database(postgres_url: str) -> Iterator[str]:
    """A fresh database on the real PostgreSQL, dropped afterwards."""
    import psycopg

    name = f"sb_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield postgres_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.postgres
async def test_served_sandbox_on_postgres_passes_the_conformance_self_test(
    postgres_database: str,
) -> None:
    """The same self-test with the broker's store on the real PostgreSQL (two workers)."""
    key = {"SERVICEBAY_BROKER_KEY": Fernet.generate_key().decode()}
    with serve_broker(SANDBOX, db=postgres_database, workers=2, env=key) as served:
        report = await run_checks(
            served.url, username=served.username, password=served.password, poll_timeout=60
        )
    failed = [f"{r.check}: {r.detail}" for r in report.results if r.outcome is Outcome.FAIL]
    assert not failed, "\n".join(failed)


async def test_served_sandbox_passes_the_conformance_self_test() -> None:
    """Every check passes over a real socket against `bay broker serve`, all plans included."""
    with serve_broker("servicebay.examples.sandbox:broker") as served:
        report = await run_checks(
            served.url, username=served.username, password=served.password, poll_timeout=60
        )
    failed = [f"{r.check}: {r.detail}" for r in report.results if r.outcome is Outcome.FAIL]
    assert not failed, "\n".join(failed)
    assert report.get("plan[sandbox/async].provision.poll").outcome is Outcome.PASS


def test_bay_broker_check_exit_codes_against_a_served_broker() -> None:
    """`bay broker check` as a real command: exit 0 on the sandbox, 3 with a wrong password."""
    with serve_broker("servicebay.examples.sandbox:broker") as served:
        command = [
            sys.executable,
            "-m",
            "servicebay",
            "broker",
            "check",
            served.url,
            "--username",
            served.username,
            "--plan",
            "sync",
        ]
        # The password travels in the environment, as the command's help recommends.
        good_env = {**os.environ, "SERVICEBAY_BROKER_PASSWORD": served.password}
        good = subprocess.run(command, env=good_env, capture_output=True, text=True, timeout=120)
        bad_env = {**os.environ, "SERVICEBAY_BROKER_PASSWORD": "not-the-password"}
        bad = subprocess.run(command, env=bad_env, capture_output=True, text=True, timeout=120)
    assert good.returncode == 0, good.stdout + good.stderr
    assert " 0 failed" in good.stdout
    assert served.password not in good.stdout + good.stderr
    assert bad.returncode == 3, bad.stdout + bad.stderr
    assert "error: the broker refused these credentials" in bad.stderr


async def test_served_broker_logs_never_contain_credentials_or_secrets() -> None:
    """After binds and a write-only parameter, the process log holds neither in clear."""
    import httpx

    from servicebay.examples.sandbox import SERVICE_ID, plan_id

    ids = {"service_id": SERVICE_ID, "plan_id": plan_id("param")}
    secret = "write-only-" + uuid.uuid4().hex
    with serve_broker(SANDBOX) as served:
        async with httpx.AsyncClient(
            base_url=served.url,
            auth=(served.username, served.password),
            headers={"X-Broker-API-Version": "2.17"},
        ) as client:
            body = {
                **ids,
                "organization_guid": "o",
                "space_guid": "s",
                "parameters": {"secret": secret},
            }
            assert (await client.put("/v2/service_instances/i1", json=body)).status_code == 201
            bound = await client.put("/v2/service_instances/i1/service_bindings/b1", json=ids)
            password = bound.json()["credentials"]["password"]
            refused = await client.put(
                "/v2/service_instances/i2", json={**body, "parameters": {"secret": 7}}
            )
            assert refused.status_code == 400
        log = served.log
    assert "broker started" in log  # the log was written, so its absence of secrets means something
    assert password not in log
    assert secret not in log
    assert served.password not in log


async def test_the_guides_40_line_broker_passes_the_self_test() -> None:
    """The complete broker from docs/broker-sdk.md, served for real, passes every check."""
    with serve_broker("servicebay.examples.minimal:broker") as served:
        report = await run_checks(served.url, username=served.username, password=served.password)
    bad = [
        f"{r.check}: {r.detail}"
        for r in report.results
        if r.outcome in (Outcome.FAIL, Outcome.WARN)
    ]
    assert not bad, "\n".join(bad)
    assert report.get("plan[keys/free].bind.idempotent").outcome is Outcome.PASS

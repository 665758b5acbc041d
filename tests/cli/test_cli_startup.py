"""`bay` starts without the servers: a command such as `bay instances` loads the CLI, its HTTP
client and its output, not the platform app, the broker SDK, the RabbitMQ broker or the
conformance checks (together they took about 1.5 s of every command's start on this machine)."""

from __future__ import annotations

import json
import subprocess
import sys

# Loaded only by the commands that run them (`bay server`, `bay broker serve|check`, `bay rabbitmq`,
# `bay chat serve`, `bay demo`).
HEAVY = (
    "sqlalchemy",
    "starlette",
    "uvicorn",
    "asyncpg",
    "servicebay.broker",
    "servicebay.brokers.rabbitmq",
    "servicebay.chat",
    "servicebay.conformance",
    "servicebay.platform.api",
    "servicebay.platform.worker",
)


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport json, sys; print(json.dumps(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    return set(json.loads(out.splitlines()[-1]))


def test_the_bay_command_loads_no_server_at_start() -> None:
    loaded = _modules_after("import servicebay.cli.main")
    assert "servicebay.cli.commands" in loaded  # the check below looks at a real start
    assert sorted(m for m in HEAVY if m in loaded) == []


def test_the_platform_package_still_offers_its_app_settings_and_worker() -> None:
    """`servicebay.platform` loads what it names on first use (PEP 562), and only then."""
    loaded = _modules_after("import servicebay.platform")
    assert "servicebay.platform.api" not in loaded
    loaded = _modules_after(
        "from servicebay.platform import PlatformSettings, Worker, create_app, store\n"
        "assert callable(create_app) and PlatformSettings.__name__ == 'PlatformSettings'\n"
        "assert Worker.__name__ == 'Worker' and store.Database"
    )
    assert {"servicebay.platform.api.app", "servicebay.platform.worker"} <= loaded

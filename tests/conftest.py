"""Fixtures shared by the whole suite: the real services' URLs, and unique names on them."""

from __future__ import annotations

import os

import pytest

POSTGRES_URL = os.environ.get(
    "SERVICEBAY_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"
)
RABBITMQ_AMQP = os.environ.get("SERVICEBAY_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672/")
RABBITMQ_MANAGEMENT = os.environ.get("SERVICEBAY_TEST_RABBITMQ_API", "http://127.0.0.1:15672")


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """URL of the machine's real PostgreSQL (the `test` database)."""
    return POSTGRES_URL

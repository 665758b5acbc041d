"""Broker settings from SERVICEBAY_RABBITMQ_* and flags, and the start-up gate that refuses
an unreachable management API or refused credentials with a message saying which."""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx
import pytest

from servicebay.brokers.rabbitmq import (
    ConfigurationError,
    RabbitMQBrokerSettings,
    check_management_access,
)


def test_environment_then_flags() -> None:
    """Variables are read by field name; flags (overrides) win; defaults fill the rest."""
    settings = RabbitMQBrokerSettings.from_env(
        {
            "SERVICEBAY_RABBITMQ_MANAGEMENT_URL": "https://mq.example:15671/",
            "SERVICEBAY_RABBITMQ_MANAGEMENT_PASSWORD": "pw",
            "SERVICEBAY_RABBITMQ_AMQPS": "true",
            "SERVICEBAY_RABBITMQ_PREFIX": "team-",
        },
        prefix="flag-",
        amqp_host=None,  # a flag not given does not erase the environment
    )
    assert settings.management_url == "https://mq.example:15671"
    assert settings.management_password.get_secret_value() == "pw"
    assert settings.prefix == "flag-"
    assert (settings.handed_out_host, settings.handed_out_port) == ("mq.example", 5671)


def test_plain_amqp_defaults_to_5672_and_explicit_port_wins() -> None:
    """Without amqps the handed-out port is 5672 unless set."""
    assert RabbitMQBrokerSettings.from_env({}).handed_out_port == 5672
    assert RabbitMQBrokerSettings.from_env({}, amqp_port=6000).handed_out_port == 6000


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("MANAGEMENT_URL", "ftp://mq", "http(s) URL"),
        ("MANAGEMENT_URL", "http://admin:pw@mq:15672", "must not contain credentials"),
        ("AMQP_PORT", "70000", "less than or equal to 65535"),
        ("AMQP_CA_FILE", "/nonexistent/ca.pem", "no such file"),
        ("PREFIX", "x" * 33, "at most 32 characters"),
        ("SURPRISE", "x", None),  # unknown variables are simply not read
    ],
)
def test_bad_values_name_the_variable(variable: str, value: str, message: str | None) -> None:
    """A bad value is refused with the variable's name and what is wrong."""
    environ = {f"SERVICEBAY_RABBITMQ_{variable}": value}
    if message is None:
        RabbitMQBrokerSettings.from_env(environ)
        return
    with pytest.raises(ConfigurationError) as caught:
        RabbitMQBrokerSettings.from_env(environ)
    assert f"SERVICEBAY_RABBITMQ_{variable}" in str(caught.value)
    assert message in str(caught.value)
    assert "admin:pw" not in str(caught.value)


def test_empty_prefix_is_refused() -> None:
    """The prefix is the broker's namespace in RabbitMQ; an empty one would claim everything."""
    with pytest.raises(ConfigurationError) as caught:
        RabbitMQBrokerSettings.from_env({}, prefix="")
    assert "SERVICEBAY_RABBITMQ_PREFIX" in str(caught.value)


def test_describe_hides_the_password(tmp_path: Path) -> None:
    """The start-up description shows every setting but the password."""
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    settings = RabbitMQBrokerSettings.from_env(
        {}, management_password="very-secret", amqp_ca_file=str(ca)
    )
    described = settings.describe()
    assert "very-secret" not in repr(described)
    assert described["amqp_ca_file"] == str(ca)
    assert "very-secret" not in repr(settings)


@pytest.mark.rabbitmq
async def test_start_up_gate_passes_with_admin_credentials(management_url: str) -> None:
    """The machine's admin credentials pass; the RabbitMQ version is returned."""
    settings = RabbitMQBrokerSettings.from_env({}, management_url=management_url)
    async with settings.management_api() as api:
        version = await check_management_access(settings, api)
    assert version[0].isdigit()


@pytest.mark.rabbitmq
async def test_start_up_gate_refuses_wrong_password(management_url: str) -> None:
    """Wrong credentials: the message says the user was refused and which variables to set."""
    settings = RabbitMQBrokerSettings.from_env(
        {}, management_url=management_url, management_password="not-the-password"
    )
    async with settings.management_api() as api:
        with pytest.raises(ConfigurationError) as caught:
            await check_management_access(settings, api)
    assert "refused user 'guest'" in str(caught.value)
    assert "SERVICEBAY_RABBITMQ_MANAGEMENT_PASSWORD" in str(caught.value)
    assert "not-the-password" not in str(caught.value)


async def test_start_up_gate_refuses_unreachable_api(unused_tcp_port: int) -> None:
    """Nothing listening: the message says unreachable and hints at the management plugin."""
    settings = RabbitMQBrokerSettings.from_env(
        {}, management_url=f"http://127.0.0.1:{unused_tcp_port}", attempts=1
    )
    async with settings.management_api() as api:
        with pytest.raises(ConfigurationError) as caught:
            await check_management_access(settings, api)
    assert "unreachable" in str(caught.value)
    assert "rabbitmq_management" in str(caught.value)


@pytest.mark.rabbitmq
async def test_start_up_gate_refuses_user_without_administrator_tag(
    management_url: str, rabbitmq_prefix: str
) -> None:
    """A user that can log in but may not create vhosts is refused, naming the missing tag."""
    user = rabbitmq_prefix + "monitor"
    async with httpx.AsyncClient(auth=("guest", "guest")) as admin:
        response = await admin.put(
            f"{management_url}/api/users/{user}", json={"password": "pw", "tags": "monitoring"}
        )
        assert response.status_code in (201, 204)
    settings = RabbitMQBrokerSettings.from_env(
        {}, management_url=management_url, management_username=user, management_password="pw"
    )
    async with settings.management_api() as api:
        with pytest.raises(ConfigurationError) as caught:
            await check_management_access(settings, api)
    assert "'administrator' tag" in str(caught.value)


async def test_management_ca_file_is_trusted_for_https(tmp_path: Path) -> None:
    """A CA bundle for the management API becomes the client's TLS trust; a bad one fails."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    ca = tmp_path / "ca.pem"
    ca.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    settings = RabbitMQBrokerSettings.from_env(
        {}, management_url="https://mq.example:15671", management_ca_file=str(ca)
    )
    async with settings.management_api() as api:
        assert api.base_url == "https://mq.example:15671"

    broken = tmp_path / "broken.pem"
    broken.write_text("not a certificate")
    settings = RabbitMQBrokerSettings.from_env({}, management_ca_file=str(broken))
    with pytest.raises(ssl.SSLError):
        settings.management_api()

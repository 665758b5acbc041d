"""How an app looks its bindings up: find(), all(), the VCAP_SERVICES fallback, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from servicebay import bindings
from servicebay.bindings import AmbiguousBinding, Binding, BindingNotFound, InvalidBinding


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A binding root with two rabbitmq bindings and one postgresql binding, set in the env."""
    monkeypatch.setenv("SERVICE_BINDING_ROOT", str(tmp_path))
    monkeypatch.delenv("VCAP_SERVICES", raising=False)
    for name, kind in [("chat-mq", "rabbitmq"), ("audit-mq", "rabbitmq"), ("db", "postgresql")]:
        bindings.write(
            Binding.from_credentials(name, kind, {"uri": f"{kind}://{name}", "password": "hunter2"})
        )
    return tmp_path


def test_find_by_type_when_unique(root: Path) -> None:
    """The usual call: one binding of the type → that binding, from $SERVICE_BINDING_ROOT."""
    assert bindings.find(type="postgresql")["uri"] == "postgresql://db"


def test_find_by_type_and_name(root: Path) -> None:
    """A name narrows an ambiguous type to one binding."""
    assert bindings.find(type="rabbitmq", name="chat-mq")["uri"] == "rabbitmq://chat-mq"


def test_ambiguous_type_names_candidates(root: Path) -> None:
    """Two bindings of one type: the error names both and says how to choose."""
    with pytest.raises(AmbiguousBinding) as caught:
        bindings.find(type="rabbitmq")
    assert caught.value.names == ["audit-mq", "chat-mq"]
    assert "name=" in str(caught.value)


def test_missing_binding_says_what_exists_but_no_values(root: Path) -> None:
    """The not-found message lists names and types present, never a credential."""
    with pytest.raises(BindingNotFound) as caught:
        bindings.find(type="redis")
    message = str(caught.value)
    assert "type='redis'" in message
    assert "db (type postgresql)" in message
    assert str(root) in message
    assert "hunter2" not in message


def test_all_lists_every_binding_sorted(root: Path) -> None:
    """all() returns a snapshot sorted by name, with filter() and get()."""
    snapshot = bindings.all()
    assert snapshot.names == ["audit-mq", "chat-mq", "db"]
    assert [b.name for b in snapshot.filter(type="rabbitmq")] == ["audit-mq", "chat-mq"]
    assert snapshot.get("db") is not None
    assert snapshot.get("nope") is None


def test_repr_never_shows_values(root: Path) -> None:
    """repr() of a binding or snapshot shows names only."""
    binding = bindings.find(name="db")
    assert "hunter2" not in repr(binding)
    assert "password" in repr(binding)
    assert "hunter2" not in repr(bindings.all())


def test_binary_entry_is_raw_only(tmp_path: Path) -> None:
    """A non-UTF-8 entry is available as bytes; as text it is a clear error."""
    bindings.write(Binding("ks", {"type": "tls", "keystore": b"\xff\x00\xfe"}), tmp_path)
    found = bindings.find(type="tls", root=tmp_path)
    assert found.raw("keystore") == b"\xff\x00\xfe"
    with pytest.raises(InvalidBinding, match=r"\.raw"):
        found["keystore"]


VCAP = {
    "rabbitmq": [
        {
            "name": "Chat MQ",
            "label": "rabbitmq",
            "plan": "standard",
            "credentials": {"uri": "amqp://x", "port": 5672, "tls": {"on": True}},
        }
    ],
    "postgresql": [{"name": "db", "credentials": {"uri": "pg://", "provider": "acme"}}],
}


def test_vcap_services_used_when_no_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No binding root: bindings come from VCAP_SERVICES, typed by label, names folded."""
    monkeypatch.setenv("SERVICE_BINDING_ROOT", str(tmp_path / "missing"))
    monkeypatch.setenv("VCAP_SERVICES", json.dumps(VCAP))
    mq = bindings.find(type="rabbitmq")
    assert mq.name == "chat-mq"
    assert mq["uri"] == "amqp://x"
    assert mq["port"] == "5672"
    assert json.loads(mq["tls"]) == {"on": True}
    assert bindings.find(type="postgresql").provider == "acme"
    assert bindings.all().source == "VCAP_SERVICES"


def test_root_wins_over_vcap(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """When the root exists, VCAP_SERVICES is not consulted."""
    monkeypatch.setenv("VCAP_SERVICES", json.dumps(VCAP))
    assert bindings.all().names == ["audit-mq", "chat-mq", "db"]


def test_malformed_vcap_is_a_clear_error_without_content(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bad JSON in VCAP_SERVICES: the error says where, not what."""
    monkeypatch.delenv("SERVICE_BINDING_ROOT", raising=False)
    monkeypatch.setenv("VCAP_SERVICES", '{"x": [{"credentials": {"password": "hunter2"')
    with pytest.raises(InvalidBinding) as caught:
        bindings.all()
    assert "VCAP_SERVICES" in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_nothing_configured_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    """Neither root nor VCAP_SERVICES: an empty snapshot, and find() explains both are unset."""
    monkeypatch.delenv("SERVICE_BINDING_ROOT", raising=False)
    monkeypatch.delenv("VCAP_SERVICES", raising=False)
    assert len(bindings.all()) == 0
    with pytest.raises(BindingNotFound, match="SERVICE_BINDING_ROOT unset"):
        bindings.find(type="rabbitmq")

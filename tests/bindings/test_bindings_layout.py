"""Writing and reading $SERVICE_BINDING_ROOT (servicebinding.io "Workload Projection")."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from servicebay import bindings
from servicebay.bindings import Binding, BindingError, InvalidBinding


def _mq(password: str = "s3cret", name: str = "chat-mq") -> Binding:
    return Binding.from_credentials(
        name,
        "rabbitmq",
        {"uri": f"amqp://u:{password}@h/v", "password": password, "port": 5672},
        provider="servicebay",
    )


def test_write_creates_spec_layout_with_private_modes(tmp_path: Path) -> None:
    """Each entry is a file under <root>/<name>/; files are 0600 and directories 0700."""
    root = tmp_path / "bindings"
    bindings.write(_mq(), root)
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    binding_dir = root / "chat-mq"
    assert binding_dir.is_dir()
    assert stat.S_IMODE(binding_dir.stat().st_mode) == 0o700
    assert sorted(p.name for p in binding_dir.iterdir()) == [
        "password",
        "port",
        "provider",
        "type",
        "uri",
    ]
    for entry in binding_dir.iterdir():
        assert stat.S_IMODE(entry.stat().st_mode) == 0o600
    assert (binding_dir / "type").read_text() == "rabbitmq"
    assert (binding_dir / "provider").read_text() == "servicebay"
    assert (binding_dir / "port").read_text() == "5672"


def test_modes_do_not_depend_on_umask(tmp_path: Path) -> None:
    """A permissive umask still yields 0600 files."""
    old = os.umask(0)
    try:
        bindings.write(_mq(), tmp_path)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "chat-mq" / "uri").stat().st_mode) == 0o600


def test_read_back_equals_written(tmp_path: Path) -> None:
    """What is written is what is read, with type and provider as attributes."""
    bindings.write(_mq(), tmp_path)
    found = bindings.find(type="rabbitmq", root=tmp_path)
    assert found == _mq()
    assert found.type == "rabbitmq"
    assert found.provider == "servicebay"
    assert found["password"] == "s3cret"
    assert found.path == tmp_path / "chat-mq"


def test_rewrite_replaces_binding_and_leaves_no_debris(tmp_path: Path) -> None:
    """Rewriting swaps to the new content; no old data directory stays behind."""
    bindings.write(_mq("one"), tmp_path)
    bindings.write(_mq("two"), tmp_path)
    assert bindings.find(name="chat-mq", root=tmp_path)["password"] == "two"
    assert len(list(tmp_path.iterdir())) == 2  # the link and its one data directory


def test_remove_deletes_every_trace(tmp_path: Path) -> None:
    """After remove() nothing of the binding is left on disk."""
    bindings.write(_mq(), tmp_path)
    assert bindings.remove("chat-mq", tmp_path) is True
    assert list(tmp_path.iterdir()) == []
    assert bindings.remove("chat-mq", tmp_path) is False


def test_plain_directory_written_by_others_is_read_and_replaceable(tmp_path: Path) -> None:
    """A binding directory made by another tool (e.g. a Kubernetes volume) is read and can be
    replaced or removed."""
    plain = tmp_path / "account-db"
    plain.mkdir()
    (plain / "type").write_text("postgresql\n")
    (plain / "uri").write_text("postgresql://db")
    found = bindings.find(type="postgresql", root=tmp_path)
    assert found.name == "account-db"
    assert found.provider is None
    bindings.write(Binding.from_credentials("account-db", "postgresql", {"uri": "new"}), tmp_path)
    assert bindings.find(name="account-db", root=tmp_path)["uri"] == "new"
    assert bindings.remove("account-db", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_directories_without_type_are_ignored(tmp_path: Path) -> None:
    """spec: directories that do not contain a `type` entry SHOULD be ignored."""
    (tmp_path / "not-a-binding").mkdir()
    (tmp_path / "not-a-binding" / "uri").write_text("x")
    (tmp_path / "stray-file").write_text("x")
    assert list(bindings.all(tmp_path)) == []


def test_project_keeps_root_in_step(tmp_path: Path) -> None:
    """project() writes the given bindings and removes every other one."""
    other = Binding.from_credentials("db", "postgresql", {"uri": "p"})
    bindings.project([_mq(), other], tmp_path)
    assert bindings.all(tmp_path).names == ["chat-mq", "db"]
    bindings.project([other], tmp_path)
    assert bindings.all(tmp_path).names == ["db"]
    assert not (tmp_path / "chat-mq").exists()


def test_project_refuses_duplicate_names(tmp_path: Path) -> None:
    """Two bindings with one name are refused before anything is written."""
    with pytest.raises(InvalidBinding, match="chat-mq"):
        bindings.project([_mq("a"), _mq("b")], tmp_path)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("name", ["Chat", "a/b", "..", ".hidden", "", "x" * 254, "a_b"])
def test_invalid_binding_names_are_refused(name: str) -> None:
    """spec: binding names MUST match [a-z0-9\\-\\.]{1,253}."""
    with pytest.raises(InvalidBinding):
        Binding.from_credentials(name, "t", {})


@pytest.mark.parametrize("entry", ["a/b", "..", ".x", ""])
def test_invalid_entry_names_are_refused(entry: str) -> None:
    """An entry name can never escape the binding directory."""
    with pytest.raises(InvalidBinding):
        Binding.from_credentials("ok", "t", {entry: "v"})


def test_writer_without_root_explains(monkeypatch: pytest.MonkeyPatch) -> None:
    """Writing with no root given and none in the environment is a clear error."""
    monkeypatch.delenv("SERVICE_BINDING_ROOT", raising=False)
    with pytest.raises(BindingError, match="SERVICE_BINDING_ROOT"):
        bindings.write(_mq())


def test_readers_never_see_half_a_binding(tmp_path: Path) -> None:
    """While a writer rotates a binding, every read is one complete version."""
    versions = [
        Binding.from_credentials(
            "rot", "t", {f"k{i}": str(version) for i in range(10)} | {"v": str(version)}
        )
        for version in range(2)
    ]
    bindings.write(versions[0], tmp_path)
    stop = threading.Event()
    seen: list[Binding] = []
    errors: list[BaseException] = []

    def read() -> None:
        while not stop.is_set():
            try:
                seen.append(bindings.find(name="rot", root=tmp_path))
            except BaseException as error:  # collected to fail the test below
                errors.append(error)
                return

    readers = [threading.Thread(target=read) for _ in range(2)]
    for reader in readers:
        reader.start()
    for turn in range(80):
        bindings.write(versions[turn % 2], tmp_path)
    stop.set()
    for reader in readers:
        reader.join()
    assert errors == []
    assert seen
    assert all(binding in versions for binding in seen)

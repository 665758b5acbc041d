"""Reading and writing ``$SERVICE_BINDING_ROOT`` (spec: servicebinding.io "Workload Projection").

On disk, as an app sees it::

    $SERVICE_BINDING_ROOT/
    ├── chat-mq -> ..chat-mq.1f3a9c0e      a symlink per binding (a directory to any reader)
    ├── ..chat-mq.1f3a9c0e/                the binding's data, 0700
    │   ├── type                           entries, 0600
    │   ├── provider
    │   └── uri
    └── account-db/                        a plain directory written by someone else: read too

Why the symlink: a reader must never see half a binding. The writer fills a fresh hidden
directory, then swaps the symlink with ``os.replace`` (atomic on POSIX), then removes the old
directory. A reader resolves the link once and reads every entry from that one directory; if the
directory vanishes under it (a swap happened meanwhile) it starts again from the new link.
Directories without a ``type`` entry are ignored (spec: they SHOULD be).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterable
from pathlib import Path

from servicebay.bindings._binding import TYPE_ENTRY, Binding, check_binding_name
from servicebay.bindings._errors import BindingError, InvalidBinding

#: The environment variable naming the binding root (spec: MUST be declared).
ROOT_ENV = "SERVICE_BINDING_ROOT"

_DIR_MODE = 0o700
_FILE_MODE = 0o600
_DATA_PREFIX = ".."
# A reader racing a writer retries this often before giving up; each retry means a swap happened,
# so running out means a writer rewrites the binding faster than it can be read.
_READ_ATTEMPTS = 20


def read_binding(path: Path) -> Binding | None:
    """Read the binding at ``path`` (a directory or a symlink to one); ``None`` if not a binding."""
    for _ in range(_READ_ATTEMPTS):
        try:
            return _read_once(path)
        except FileNotFoundError:
            # The data directory was swapped away while we read it; read the new one.
            if not os.path.lexists(path):
                return None
    raise BindingError(f"binding {path.name!r} kept changing while being read")


def _read_once(path: Path) -> Binding | None:
    """Read one binding directory in a single pass; FileNotFoundError means 'raced, retry'."""
    data_dir = Path(os.path.realpath(path))
    if not data_dir.is_dir():
        if os.path.lexists(path) and Path(os.path.realpath(path)) != data_dir:
            raise FileNotFoundError(path)  # swapped between the two looks: read again
        return None
    entries: dict[str, bytes | str] = {}
    for entry in data_dir.iterdir():
        if entry.name.startswith(".") or not entry.is_file():
            continue
        entries[entry.name] = entry.read_bytes()
    if Path(os.path.realpath(path)) != data_dir:
        # A swap happened after we resolved the link: the old directory may already be half
        # removed, so what we read may be partial. Only a swap makes rmtree start, hence the check.
        raise FileNotFoundError(path)
    if TYPE_ENTRY not in entries:
        return None
    try:
        return Binding(path.name, entries, path=path)
    except InvalidBinding:
        # spec: the workload SHOULD ignore what is not a binding; a bad name or entry is not one.
        return None


def read_root(root: Path) -> list[Binding]:
    """Read every binding under ``root``, sorted by name; raise if ``root`` is not a directory."""
    if not root.is_dir():
        raise BindingError(f"binding root {str(root)!r} is not a directory")
    found = []
    for child in sorted(root.iterdir()):
        if child.name.startswith("."):
            continue
        binding = read_binding(child)
        if binding is not None:
            found.append(binding)
    return found


def ensure_root(root: Path) -> Path:
    """Create ``root`` (mode 0700) if it does not exist, and return it."""
    root.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
    return root


def write(root: Path, binding: Binding) -> Path:
    """Write ``binding`` under ``root`` atomically and return its path.

    Replaces an existing binding of the same name in one step: a reader sees the old binding or
    the new one, never a mix, never a partial one.
    """
    ensure_root(root)
    name = check_binding_name(binding.name)
    data_dir = root / f"{_DATA_PREFIX}{name}.{secrets.token_hex(8)}"
    data_dir.mkdir(mode=_DIR_MODE)
    try:
        for entry, value in binding.raw_entries().items():
            _write_file(data_dir / entry, value)
        _fsync_dir(data_dir)
        link = root / name
        old_data = _current_data_dir(link)
        if link.exists() and not link.is_symlink():
            # Someone else's plain directory: rename(2) cannot replace a non-empty directory,
            # so move it aside first. The gap is the one non-atomic case, documented above.
            aside = root / f"{_DATA_PREFIX}{name}.{secrets.token_hex(8)}.old"
            link.rename(aside)
            old_data = aside
        tmp_link = root / f"{_DATA_PREFIX}{name}.{secrets.token_hex(8)}.link"
        tmp_link.symlink_to(data_dir.name)
        os.replace(tmp_link, link)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(data_dir, ignore_errors=True)
        raise
    if old_data is not None:
        shutil.rmtree(old_data, ignore_errors=True)
    return link


def remove(root: Path, name: str) -> bool:
    """Remove the binding ``name`` from ``root``; return whether there was one."""
    link = root / check_binding_name(name)
    old_data = _current_data_dir(link)
    if link.is_symlink():
        link.unlink()
    elif link.is_dir():
        shutil.rmtree(link)
        return True
    else:
        return False
    if old_data is not None:
        shutil.rmtree(old_data, ignore_errors=True)
    _fsync_dir(root)
    return True


def project(root: Path, bindings: Iterable[Binding]) -> list[Path]:
    """Make ``root`` hold exactly ``bindings``: write each one, remove every other binding.

    This is how ``bay run`` keeps an app's root in step with the platform: a binding that was
    unbound disappears from the root.
    """
    wanted = list(bindings)
    names = [binding.name for binding in wanted]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        # spec: name collisions are undefined; we make a good faith check instead.
        raise InvalidBinding(f"several bindings named {', '.join(duplicates)}")
    ensure_root(root)
    current = {binding.name: binding for binding in read_root(root)}
    paths = []
    for binding in wanted:
        if current.get(binding.name) != binding:
            write(root, binding)
        paths.append(root / binding.name)
    for name in set(current) - set(names):
        remove(root, name)
    return paths


def _current_data_dir(link: Path) -> Path | None:
    """Return the private data directory a binding symlink points to, if it is ours."""
    if not link.is_symlink():
        return None
    target = Path(os.readlink(link))
    if target.is_absolute() or len(target.parts) != 1 or not target.name.startswith(_DATA_PREFIX):
        return None
    return link.parent / target


def _write_file(path: Path, value: bytes) -> None:
    """Create ``path`` with mode 0600 (never wider, whatever the umask) and write ``value``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, _FILE_MODE)
    with os.fdopen(fd, "wb") as handle:
        handle.write(value)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    """Flush a directory's entries so a rename survives a crash (best effort off POSIX)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

"""Property: any valid binding written to disk reads back identical."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from servicebay import bindings
from servicebay.bindings import Binding

names = st.from_regex(r"[a-z0-9][a-z0-9\-.]{0,40}", fullmatch=True)
entry_names = st.from_regex(r"[A-Za-z0-9_\-][A-Za-z0-9_\-.]{0,40}", fullmatch=True).filter(
    lambda name: name not in {"type", "provider"}
)
values = st.one_of(st.binary(max_size=200), st.text(max_size=200))


@settings(max_examples=60, deadline=None)
@given(
    name=names,
    kind=st.text(min_size=1, max_size=30).filter(lambda text: text.strip() == text and text),
    provider=st.none() | st.from_regex(r"[a-z][a-z0-9\-]{0,20}", fullmatch=True),
    entries=st.dictionaries(entry_names, values, max_size=8),
)
def test_write_then_read_round_trips(
    name: str, kind: str, provider: str | None, entries: dict[str, bytes | str]
) -> None:
    """write() then find() returns an equal binding, byte for byte."""
    binding = Binding.from_credentials(name, kind, entries, provider=provider)
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        bindings.write(binding, root)
        found = bindings.find(name=name, root=root)
    assert found == binding
    assert found.type == kind
    assert found.provider == provider
    for key, value in entries.items():
        assert found.raw(key) == (value if isinstance(value, bytes) else value.encode())

"""``bay server`` writes each HTTP answer once: headers together with the body that follows."""

from __future__ import annotations

import asyncio
from typing import Any

from servicebay.platform.api.serving import _HeadWithBody

HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"


class _Recording(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


async def test_headers_and_body_leave_in_one_write() -> None:
    """The header block waits for the body written right after it: one write per answer."""
    recording = _Recording()
    transport = _HeadWithBody(recording)
    transport.write(HEAD)
    transport.write(b"{}")
    transport.write(HEAD)
    transport.write(b"[]")
    await asyncio.sleep(0)
    assert recording.writes == [HEAD + b"{}", HEAD + b"[]"]


async def test_headers_without_a_body_behind_them_leave_at_the_next_loop_turn() -> None:
    """A streamed answer whose body comes later still gets its headers out at once, and
    closing the connection sends a header block still held."""
    recording = _Recording()
    transport = _HeadWithBody(recording)
    transport.write(HEAD)
    assert recording.writes == []
    await asyncio.sleep(0)
    assert recording.writes == [HEAD]
    transport.write(HEAD)
    transport.close()
    assert recording.writes == [HEAD, HEAD]
    assert recording.closed

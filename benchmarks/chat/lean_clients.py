"""The chat benchmarks' load generator: lean protocol clients, and their own processes.

Shared by ``bench_chat.py`` (SQLite store) and ``bench_chat_rabbitmq.py`` (RabbitMQ store), so
that both backends are driven by exactly the same clients.

A ``Receiver`` does what a client must (decode every frame, check that each seq follows the
previous one, ack cumulatively like ``servicebay.chat.client``: ``ACK_EVERY`` after a message
arrives, at once when ``ACK_AT`` are unacknowledged) and nothing
else, on websockets' sans-I/O protocol over an asyncio ``Protocol``: no task, future or queue
per WebSocket message, so that 100 of them cost the two shared cores little next to the server
they measure. Arrival time is stamped when the bytes arrive (``data_received``), before decoding.

A ``Sender`` sends what ``servicebay.chat.client`` would (arrays of ``send`` frames, one key
each): saturated (at most ``WINDOW`` unanswered: what the server accepts from one connection)
or paced at a fixed rate. The body is the send
time (``time.perf_counter``, CLOCK_MONOTONIC: comparable across processes). It is a member of
the room too, so it also gets every message and acks it.

Receivers run in child processes (``python lean_clients.py URL TOKENS TOTAL OUT``): each writes
its latencies (float64, seconds) to ``OUT.lat`` and its figures as JSON to ``OUT``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from array import array
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.uri import parse_uri

from servicebay.chat.client import ACK_AT, ACK_EVERY
from servicebay.chat.protocol import MAX_FRAMES_PER_MESSAGE
from servicebay.chat.server import MAX_INFLIGHT_SENDS


class Receiver(asyncio.Protocol):
    """A lean protocol client of one room: records arrival latencies, acks like the client."""

    def __init__(self, url: str, token: str, total: int, room: str) -> None:
        self.url, self.token, self.total, self.room = url, token, total, room
        self.ws = ClientProtocol(parse_uri(url), max_size=None)
        self.transport: asyncio.Transport | None = None
        self.latencies = array("d")
        self.last = 0
        self.last_arrival = 0.0
        self.acked = 0
        self.ack_timer: asyncio.TimerHandle | None = None
        self.done = asyncio.Event()
        self.ready = asyncio.Event()
        self.failure: Exception | None = None
        self.done_with_all = True  # stop once every message arrived

    async def run(self) -> None:
        uri = parse_uri(self.url)
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_connection(lambda: self, uri.host, uri.port)
        try:
            await self.done.wait()
        finally:
            transport.close()
        if self.failure is not None:
            raise self.failure

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.ws.send_request(self.ws.connect())
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.is_set():
            self.failure = RuntimeError(f"receiver lost its connection at seq {self.last}: {exc}")
            self.done.set()

    def _flush(self) -> None:
        assert self.transport is not None
        for data in self.ws.data_to_send():
            if data:
                self.transport.write(data)

    def _send(self, frame: dict[str, Any] | list[dict[str, Any]]) -> None:
        self.ws.send_text(orjson.dumps(frame))

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        self.ws.receive_data(data)
        for event in self.ws.events_received():
            if isinstance(event, Response):
                if self.ws.handshake_exc is not None:
                    raise self.ws.handshake_exc
                hello = {"type": "hello", "v": 1, "token": self.token, "rooms": {self.room: 0}}
                self._send(hello)
            elif isinstance(event, Frame) and event.opcode == Opcode.TEXT:
                assert event.fin, "the server sends whole messages"
                try:
                    self._on_text(event.data, now)
                except Exception as exc:  # the run fails, with the reason
                    self.failure = exc
                    self.done.set()
                    return
        if self.last > self.acked:
            if self.last - self.acked >= ACK_AT or self.last >= self.total:
                self._send_ack()
            elif self.ack_timer is None:
                loop = asyncio.get_running_loop()
                self.ack_timer = loop.call_later(ACK_EVERY, self._ack_due)
        self._flush()
        if self.last >= self.total and self.done_with_all:
            self.done.set()

    def _send_ack(self) -> None:
        """Ack up to the last seq seen (cumulative), as ``servicebay.chat.client`` does."""
        if self.ack_timer is not None:
            self.ack_timer.cancel()
            self.ack_timer = None
        self._send({"type": "ack", "room": self.room, "seq": self.last})
        self.acked = self.last

    def _ack_due(self) -> None:
        self.ack_timer = None
        if self.ws.state is State.OPEN and self.transport and not self.transport.is_closing():
            self._send_ack()
            self._flush()

    def _on_text(self, text: bytes | bytearray | memoryview, now: float) -> None:
        data = orjson.loads(text)
        for frame in data if isinstance(data, list) else [data]:
            kind = frame["type"]
            if kind == "msg":
                if frame["seq"] != self.last + 1:
                    raise AssertionError(f"gap or duplicate: {frame['seq']} after {self.last}")
                self.last = frame["seq"]
                self.latencies.append(now - float(frame["body"]))
                self.last_arrival = now
            elif kind == "joined":
                self.ready.set()
            elif kind == "error":
                raise RuntimeError(f"the server refused a frame: {frame}")


class Sender(Receiver):
    """A lean sender: saturated (``WINDOW`` unanswered) or paced; records send→``sent``."""

    WINDOW = MAX_INFLIGHT_SENDS  # as many unanswered as the server takes from one connection

    def __init__(self, url: str, token: str, total: int, room: str) -> None:
        super().__init__(url, token, total, room)
        self.done_with_all = False  # the scenario stops it, once every send was answered
        self.sent_at: dict[str, float] = {}
        self.answered: list[float] = []
        self.moved = asyncio.Event()

    async def send_all(self, rate: float) -> list[float]:
        """Send ``total`` messages (saturated when ``rate`` is 0); send→sent seconds."""
        start, sent = time.perf_counter(), 0
        while sent < self.total:
            if self.failure is not None:
                raise self.failure
            if rate:
                due = min(self.total, int((time.perf_counter() - start) * rate) + 1)
                if due <= sent:
                    await asyncio.sleep(start + sent / rate - time.perf_counter())
                    continue
            else:
                due = min(self.total, len(self.answered) + self.WINDOW)
                if due <= sent:
                    self.moved.clear()
                    await self.moved.wait()
                    continue
            now = time.perf_counter()
            frames = [
                {"type": "send", "room": self.room, "key": f"k{i}", "body": repr(now)}
                for i in range(sent, due)
            ]
            for frame in frames:
                self.sent_at[frame["key"]] = now
            if len(frames) == 1:
                self._send(frames[0])
            for at in range(0, len(frames) if len(frames) > 1 else 0, MAX_FRAMES_PER_MESSAGE):
                self._send(frames[at : at + MAX_FRAMES_PER_MESSAGE])  # arrays the server takes
            self._flush()
            sent = due
        while len(self.answered) < self.total:
            if self.failure is not None:
                raise self.failure
            self.moved.clear()
            await self.moved.wait()
        return self.answered

    def _on_text(self, text: bytes | bytearray | memoryview, now: float) -> None:
        data = orjson.loads(text)
        for frame in data if isinstance(data, list) else [data]:
            kind = frame["type"]
            if kind == "sent":
                self.answered.append(now - self.sent_at.pop(frame["key"]))
                self.moved.set()
            elif kind == "msg":
                self.last = frame["seq"]
            elif kind == "joined":
                self.ready.set()
            elif kind == "error":
                self.moved.set()
                raise RuntimeError(f"the server refused a frame: {frame}")


def pct(values: Any, p: float) -> float:
    """The p-th percentile (nearest rank) of a sequence of numbers."""
    if not len(values):
        return float("nan")
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))])


async def paced(rate: float, seconds: float, call: Callable[[int], Awaitable[None]]) -> None:
    """Start ``call(0)``, ``call(1)``, … at ``rate`` a second for ``seconds`` (on schedule, not
    after the previous one ends), then wait for them all."""
    tasks = []
    begin = time.perf_counter()
    for i in range(int(rate * seconds)):
        if (delay := begin + i / rate - time.perf_counter()) > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(call(i)))
    await asyncio.gather(*tasks)


class ReceiverProcess:
    """Receivers in a child process of their own (this module run as a script)."""

    def __init__(self, url: str, tokens: list[str], total: int, room: str, out: Path) -> None:
        self.out = out
        tokens_file = out.with_suffix(".tokens")
        tokens_file.write_text(json.dumps(tokens))
        self.args = [url, str(tokens_file), str(total), room, str(out)]
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> int:
        """Start it; return its pid once every receiver joined."""
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, __file__, *self.args, stdout=asyncio.subprocess.PIPE
        )
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), 120)
        if line.strip() != b"ready":
            raise RuntimeError(f"receivers did not start: {line!r}")
        return self.proc.pid

    async def figures(self) -> dict[str, Any]:
        """Wait until every receiver has every message: its figures and latencies."""
        assert self.proc is not None
        if await asyncio.wait_for(self.proc.wait(), 600) != 0:
            raise RuntimeError("the receivers failed")
        figures: dict[str, Any] = json.loads(self.out.read_text())
        latencies = array("d")
        latencies.frombytes(self.out.with_suffix(".lat").read_bytes())
        figures["latencies"] = latencies
        return figures

    def kill(self) -> None:
        """Stop it if it still runs (a failed run)."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()


async def receive(url: str, tokens: list[str], total: int, room: str) -> tuple[Any, array[float]]:
    """The child's work: run the receivers, say ``ready`` once all joined; their figures."""
    rs = [Receiver(url, t, total, room) for t in tokens]
    tasks = [asyncio.create_task(r.run()) for r in rs]
    await asyncio.wait_for(asyncio.gather(*(r.ready.wait() for r in rs)), 120)
    cpu0 = time.process_time()
    print("ready", flush=True)
    await asyncio.wait_for(asyncio.gather(*tasks), 600)
    latencies = array("d")
    for r in rs:
        latencies.extend(r.latencies)
    figures = {"last_arrival": max(r.last_arrival for r in rs), "cpu": time.process_time() - cpu0}
    return figures, latencies


if __name__ == "__main__":
    url, tokens_file, total, room, out = sys.argv[1:6]
    tokens = json.loads(Path(tokens_file).read_text())
    figures, latencies = asyncio.run(receive(url, tokens, int(total), room))
    Path(out).with_suffix(".lat").write_bytes(latencies.tobytes())
    Path(out).write_text(json.dumps(figures))

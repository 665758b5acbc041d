"""The issue's "done when", with the real `bay chat serve`: start with one command on the
embedded store, chat, kill the server mid-conversation, restart it, and nothing is missing."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from chat_helpers import eventually

from servicebay.chat.client import ChatClient

pytestmark = pytest.mark.e2e


def _bay_chat_serve(workdir: Path, port: int) -> subprocess.Popen[bytes]:
    """`bay chat serve` with defaults (store in the working directory), only the port chosen."""
    cmd = [sys.executable, "-m", "servicebay", "chat", "serve", "--port", str(port)]
    log = (workdir / "server.log").open("ab")
    return subprocess.Popen(cmd, cwd=workdir, stdout=log, stderr=log)


async def _ready(base: str) -> None:
    async with httpx.AsyncClient(base_url=base) as http:

        async def answers() -> bool:
            try:
                return (await http.get("/readyz")).status_code == 200
            except httpx.TransportError:
                return False

        await eventually(answers, 60)


async def test_kill_mid_conversation_and_restart_loses_nothing(tmp_path: Path) -> None:
    """Two people chat through `bay chat serve`; SIGKILL mid-conversation; after a restart
    every message acknowledged to its sender is there, in order, once."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    base, ws = f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}/ws"
    server = _bay_chat_serve(tmp_path, port)
    try:
        await _ready(base)
        assert (tmp_path / "servicebay-chat.db").exists()  # the embedded default
        async with httpx.AsyncClient(base_url=base) as http:
            ann = (await http.post("/api/v1/signup", json={"name": "ann"})).json()["token"]
            bob = (await http.post("/api/v1/signup", json={"name": "bob"})).json()["token"]
            page = await http.get("/")
            assert page.status_code == 200 and "chat.js" in page.text
        async with ChatClient(ws, ann, retry_max=0.5) as a, ChatClient(ws, bob) as b:
            await a.join("lobby")
            await b.join("lobby")
            await eventually(lambda: a.ready.is_set() and b.ready.is_set(), 30)
            sent = {await a.send("lobby", f"before {i}"): f"before {i}" for i in range(5)}
            server.send_signal(signal.SIGKILL)  # mid-conversation
            server.wait()
            during = [f"during {i}" for i in range(5)]
            later = asyncio.gather(*(a.send("lobby", body) for body in during))
            server = _bay_chat_serve(tmp_path, port)
            async with asyncio.timeout(60):
                sent.update(zip(await later, during, strict=True))
                got = [await b.next_message() for _ in range(10)]
        assert sorted(sent) == list(range(1, 11))  # each acknowledged once, no gap
        assert [(m.seq, m.body) for m in got] == sorted(sent.items())  # all there, in order
    finally:
        server.send_signal(signal.SIGKILL)
        server.wait()

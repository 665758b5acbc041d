"""The servers' listening sockets, bound by the CLI before anything else is opened.

Binding first means a busy port is said in one line and touches nothing (no store opened,
nothing adopted); the bound socket is then handed to uvicorn.
"""

from __future__ import annotations

import socket

import typer


def bound_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (IPv6 when ``host`` has a colon), not yet listening.

    A port that cannot be bound ends the command: ``error: cannot listen on H:P: <reason>``,
    exit code 2.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        typer.echo(f"error: cannot listen on {host}:{port}: {exc.strerror}", err=True)
        raise typer.Exit(2) from None
    return sock

"""The listening socket of lightseek's servers (`serve`, `label serve`), bound before they start:
a wrong port, a host that does not resolve or is not on this machine, or a port in use is one
line naming it, before a model or a database is opened."""

from __future__ import annotations

import socket

from lightseek.errors import ConfigError


def bind_server_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host``:``port`` (0: any free port); the server listens on it."""
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port {port}: a port is 0-65535 (0: any free one)")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn's own bind: restarts reuse the port
        sock.bind(address)
    except OSError as e:  # socket.gaierror included
        raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    return sock

"""Listening sockets made by hand, for servers that accept connections themselves.

Why not ``loop.create_server``: when accept() fails (no file descriptors left) asyncio logs a
traceback every time and uvloop closes the new connections without a word; a server that
accepts with ``loop.sock_accept`` can log a clear, rate-limited line and let clients wait in the
backlog instead (nbd/server.py, link/transport.py).
"""

from __future__ import annotations

import socket

LISTEN_BACKLOG = 100  # as loop.create_server's default


def listening_sockets(host: str, port: int) -> list[socket.socket]:
    """Bound, listening, non-blocking sockets for every address of ``host`` (as
    ``loop.create_server`` makes them: SO_REUSEADDR, IPv6 sockets IPv6-only). Port 0 binds the
    first address to a free port and the others to that same one. Raises OSError."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    seen = set()
    try:
        for family, kind, proto, _, address in infos:
            if (family, address) in seen:
                continue
            seen.add((family, address))
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if port == 0 and len(sockets) > 1:
                address = (address[0], sockets[0].getsockname()[1], *address[2:])
            sock.bind(address)
            sock.listen(LISTEN_BACKLOG)
            sock.setblocking(False)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets

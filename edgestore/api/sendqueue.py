"""A connection's response bytes its client has not taken yet, and cutting it off with a reset:
for the send deadline of api/protocol.py."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import socket
import struct
import termios


def unsent(transport: asyncio.WriteTransport) -> int:
    """Bytes written but not taken by the client: the transport's buffer, and the kernel's
    send queue (Linux lets the transport write again only once a third of a send buffer of up
    to 4 MiB is free: a client reading slowly may free none of it for a minute)."""
    queued = 0
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError, ValueError):  # not Linux: the buffer alone
            out = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
            queued = struct.unpack("i", out)[0]
    return transport.get_write_buffer_size() + queued


def reset(transport: asyncio.WriteTransport) -> None:
    """Abort the connection with a reset: a plain close leaves the kernel sending what it
    holds (megabytes) to a client that takes nothing, for as long as it acknowledges a zero
    window."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()

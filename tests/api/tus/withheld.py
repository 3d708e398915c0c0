"""A request head sent alone, its body withheld (raw socket): what a server refuses from the
head, it answers at once; one that waits for the body had already acted on the request."""

from __future__ import annotations

import contextlib
import socket


def answer_to_head(base_url: str, head: str, *, timeout: float = 10.0) -> bytes:
    """Everything the server sends to `head` (with `Connection: close`) until it closes, or
    until `timeout` seconds pass without a byte (b"" if it waits for the body)."""
    port = int(base_url.rsplit(":", 1)[1])
    got = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head.encode())
        with contextlib.suppress(TimeoutError):
            while chunk := sock.recv(65536):
                got += chunk
    return got

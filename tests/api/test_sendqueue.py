"""What a connection has not delivered yet, and cutting it off, on real TCP sockets."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from edgestore.api import sendqueue


async def _connected() -> tuple[asyncio.Transport, socket.socket, socket.socket]:
    """A transport writing to a peer socket that reads only when told to."""
    listener = socket.create_server(("127.0.0.1", 0))
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_connection(asyncio.Protocol, *listener.getsockname()[:2])
    peer, _ = listener.accept()
    return transport, peer, listener


def test_unsent_counts_what_the_kernel_holds_and_drops_as_the_peer_reads() -> None:
    async def run() -> None:
        transport, peer, listener = await _connected()
        try:
            transport.write(b"x" * (8 << 20))
            await asyncio.sleep(0.2)
            before = sendqueue.unsent(transport)
            # More than the transport's own buffer: the kernel's send queue counts too.
            assert before > transport.get_write_buffer_size()
            peer.setblocking(False)
            taken = 0
            deadline = time.monotonic() + 5
            while taken < 256 * 1024 and time.monotonic() < deadline:
                try:
                    taken += len(peer.recv(64 * 1024))
                except BlockingIOError:
                    await asyncio.sleep(0.01)
            await asyncio.sleep(0.2)
            assert sendqueue.unsent(transport) < before
        finally:
            transport.abort()
            peer.close()
            listener.close()

    asyncio.run(run())


def test_reset_ends_the_connection_at_once_for_a_peer_that_reads_nothing() -> None:
    """A plain close would leave the kernel sending its queue to the peer; a reset does not."""

    async def run() -> None:
        transport, peer, listener = await _connected()
        try:
            transport.write(b"x" * (8 << 20))
            await asyncio.sleep(0.2)
            sendqueue.reset(transport)
            await asyncio.sleep(0.2)
            peer.settimeout(5)
            with pytest.raises(ConnectionResetError):
                while peer.recv(1 << 20):
                    pass
        finally:
            peer.close()
            listener.close()

    asyncio.run(run())

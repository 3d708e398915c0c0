"""uvicorn's httptools protocol reading in large pieces, with a cap and a deadline on request
heads and caps on connections (api/connections.py).

Large reads: the event loop competes for the GIL with the threads that store chunks, and a
thread waiting for the GIL waits up to the switch interval (5 ms) while another runs Python
code, so the cost of each wakeup is paid per read, not per byte. uvloop reads at most 256 KiB
at a time; asyncio's loop reads into the buffer a BufferedProtocol offers, here READ_BUFFER
bytes shared by every connection of the loop (the parser copies each piece out, as with
uvloop) and divided among the requests receiving a body (see _LoopReads). Measured on
loopback with one other thread running Python code: 35 MB/s (uvloop, 256 KiB reads) against
288 MB/s (2-3 MiB reads when the loop comes back late); idle, 1.1-1.8 GB/s against uvloop's
0.75; one curl upload into edgestore 174-191 MB/s with 512 KiB reads, 256 with 2 MiB,
262-274 with 4 MiB.

httptools buffers a header line or URL until it ends and uvicorn sets no limit, so one client
sending an endless header could make the server hold gigabytes (measured: a 200 MiB header
line grew the process by 270 MiB). Here, a head that passes MAX_REQUEST_HEAD bytes is
answered 431 and the connection closed; the body (uploads) is not counted. nginx in front
limits heads too (large_client_header_buffers), but a node must not rely on it. A chunked
body's trailer fields are buffered the same way: more than MAX_REQUEST_HEAD bytes in a row
that are not body bytes (chunk framing, trailers) close the connection.

A request head must also arrive whole within `head_timeout` seconds (request_head_timeout)
of its first byte, or of the connection's opening: else 408 and the connection closed (closed
without a word when nothing came). Without it a client sending a head a byte every few seconds
(slowloris) held a connection, and a file descriptor, for as long as it liked, before any
rate limit could count it. Bodies have their own idle timeout in the routes that read them;
the time between requests is the keep-alive timeout.

A client must also take response bytes: one that takes none for `send_timeout` seconds
(send_timeout) while a response waits to be written (its receive window full) is cut off, the
connection aborted (a close would wait for the buffered bytes to go out). Without it a client
that stopped reading mid-download held its connection, its download slot and the chunks read
ahead for it forever: TCP never gives up on a peer that acknowledges a zero window.

Trailer fields (after a chunked body; tus's checksum-trailer sends Upload-Checksum there) are
kept apart from the head's fields, which uvicorn would otherwise extend with them, and
offered to the route as `trailers(scope)`: complete once the body's last message arrived.

ASGI has no message for a 1xx interim response; `informational(scope, status, headers)` writes
one to an HTTP/1.1 connection before the final response (the IETF resumable-upload draft's
104 Upload Resumption Supported, which tells a client where to resume a creation that drops).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import httptools
from starlette.types import Scope
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from edgestore.api import connections, direct, sendqueue
from edgestore.errors import TransferInterrupted

MAX_REQUEST_HEAD = 64 * 1024
_MESSAGE = b"request head (URL and headers) too large"
_TIMEOUT_MESSAGE = b"request head not received in time"
_RESPONSE_408 = (
    b"HTTP/1.1 408 Request Timeout\r\n"
    b"content-type: text/plain; charset=utf-8\r\n"
    b"content-length: " + str(len(_TIMEOUT_MESSAGE)).encode() + b"\r\n"
    b"connection: close\r\n\r\n" + _TIMEOUT_MESSAGE
)
HEAD_TIMEOUT = 30.0
SEND_TIMEOUT = 60.0
_RESPONSE_431 = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"content-type: text/plain; charset=utf-8\r\n"
    b"content-length: " + str(len(_MESSAGE)).encode() + b"\r\n"
    b"connection: close\r\n\r\n" + _MESSAGE
)


TRAILERS = "edgestore.trailers"
INFORMATIONAL = "edgestore.informational"
_REASONS = {100: "Continue", 103: "Early Hints", 104: "Upload Resumption Supported"}
READ_BUFFER = 4 * 1024 * 1024
FEW_RECEIVING = 4
MIN_READ = 256 * 1024


class _LoopReads(threading.local):
    """Per event loop (thread): the shared read buffer, and how many requests are receiving.

    The buffer is shared among the requests receiving a body: each read takes at most its
    share of it (never under MIN_READ). A body piece waits in a few places before the engine
    takes it (uvicorn's request cycle, the body bridge's queue), so the piece size sets what
    an upload holds. Up to FEW_RECEIVING requests share the whole buffer (one upload reads
    4 MiB at a time, tus-js-client's parallelUploads 4 reads 1 MiB each); more share half of
    it (eight read 256 KiB each), so the total stays near a few MiB however many upload at
    once. Measured with 8 concurrent 1 GiB uploads, peak RSS: 426 MiB with 4 MiB reads for
    each, 268 with 256 KiB; 301-323 sharing 4 MiB, 282-287 sharing 2 MiB, against the
    issue's 300. With parallelUploads 4 (1 GiB), 1 MiB reads against 512 KiB: 254 and 210
    MB/s against 220 and 191 (paired runs), and ~0.5 CPU-s/GB less.
    """

    def __init__(self) -> None:
        self.view = memoryview(bytearray(READ_BUFFER))
        self.receiving = 0

    def size(self) -> int:
        n = max(1, self.receiving)
        share = READ_BUFFER if n <= FEW_RECEIVING else READ_BUFFER // 2
        return max(MIN_READ, share // n)


_reads = _LoopReads()


class HeadTooLarge(Exception):
    pass


class BoundedHttpToolsProtocol(HttpToolsProtocol, asyncio.BufferedProtocol):
    head_timeout: float = HEAD_TIMEOUT  # see configured()
    send_timeout: float = SEND_TIMEOUT
    max_connections: int | None = None  # api/connections.py
    per_client: connections.ConnectionCounts | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._send_timer: asyncio.TimerHandle | None = None
        self._head_begun = False  # a byte of the current head arrived
        self._counted_as = ""  # in per_client's counts, as this client
        self._in_head = True
        self._head_bytes = 0
        self._refused = False
        self._counted = False  # in _reads.receiving: between a head and the end of its body
        self._body_seen = 0  # body bytes of this request the parser has handed on
        self._direct: direct.DirectBody | None = None  # the body being read into the engine
        self._read_into: memoryview | None = None  # what the last get_buffer returned
        self._trailers: list[tuple[bytes, bytes]] | None = None  # once the head has ended
        self._framing = 0  # bytes in a row that were neither head nor body
        self._body_total = 0  # body bytes the parser handed on, over the connection's life
        self._chunked = False  # a chunked body is arriving (until its message completes)
        self._began = False  # a request began in the read being parsed

    # asyncio.BufferedProtocol: the loop reads straight into the shared buffer, and the
    # parser reads from it there: httptools hands every URL, header and body piece on as a
    # bytes object of its own, so nothing refers to the buffer after data_received returns.
    def get_buffer(self, sizehint: int) -> memoryview:
        spare = _reads.view[: _reads.size()]
        if self._direct is not None:  # a claimed body: into the engine's buffer if it lent one
            self._read_into = self._direct.room(spare)
            return self._read_into
        return spare

    def buffer_updated(self, nbytes: int) -> None:
        body = self._direct
        if body is not None:
            assert self._read_into is not None
            # As data_received does: bytes of a body answered early (its rest discarded)
            # must stop the keep-alive timer that answer started, or the connection is
            # closed under a client still sending.
            self._unset_keepalive_if_required()
            landed, self._read_into = self._read_into[:nbytes], None
            if body.landed(landed):
                self._end_direct()
            return
        self.data_received(_reads.view[:nbytes])  # type: ignore[arg-type]

    # --- a body read straight into the engine's buffer (api/direct.py) -------------------------

    def _claim_direct(self, cycle: RequestResponseCycle) -> direct.DirectBody | None:
        """Take the rest of this request's body off the parser, for the route to read."""
        if (
            cycle is not self.cycle
            or self._direct is not None
            or cycle.response_complete
            or cycle.disconnected
            or not cycle.more_body
            or self.transport.is_closing()
        ):
            return None
        length = _content_length(cycle.scope["headers"])
        if length is None or length <= self._body_seen:
            return None
        pending = bytes(cycle.body)  # what the parser handed on before the claim
        cycle.body = bytearray()
        if cycle.waiting_for_100_continue:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            cycle.waiting_for_100_continue = False
        self._direct = direct.DirectBody(self, length - self._body_seen, pending)
        self.flow.pause_reading()  # until the engine lends its buffer
        return self._direct

    def _end_direct(self) -> None:
        """The claimed body has ended: a fresh parser for the connection's next request (the
        old one still waits for the bytes it never saw), and the request's end as usual."""
        self._direct = None
        self.parser = httptools.HttpRequestParser(self)
        try:
            self.parser.set_dangerous_leniencies(lenient_data_after_close=True)
        except AttributeError:  # httptools < 0.6.3, as uvicorn
            pass
        self.on_message_complete()
        cycle = self.cycle
        if cycle is not None and cycle.response_complete and not self.pipeline:
            # Answered before its body ended: the keep-alive timer the answer started was
            # stopped by the body's bytes (buffer_updated); the connection idles from now.
            self._unset_keepalive_if_required()
            if not self.transport.is_closing():
                self.timeout_keep_alive_task = self.loop.call_later(
                    self.timeout_keep_alive, self.timeout_keep_alive_handler
                )

    def _interim(
        self, cycle: RequestResponseCycle, status: int, fields: list[tuple[str, str]]
    ) -> bool:
        """Write a 1xx response now; False where it cannot go (HTTP/1.0, response begun)."""
        if not (100 <= status < 200) or status == 101:
            raise ValueError(f"{status} is not an interim status")
        lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Informational')}"]
        for name, value in fields:
            if not name or any(c in name for c in "\r\n\0: ") or any(c in value for c in "\r\n\0"):
                raise ValueError(f"invalid interim header field {name!r}")
            lines.append(f"{name}: {value}")
        if (
            cycle is not self.cycle
            or cycle.response_started
            or cycle.response_complete
            or cycle.disconnected
            or self.transport.is_closing()
            or cycle.scope.get("http_version") != "1.1"
        ):
            return False
        if cycle.waiting_for_100_continue:  # the client waits for this one before the body
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            cycle.waiting_for_100_continue = False
        self.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        return True

    def direct_resume(self) -> None:
        if self.flow is not None and self.transport is not None and not self.transport.is_closing():
            self.flow.resume_reading()

    def direct_pause(self) -> None:
        if self.flow is not None:
            self.flow.pause_reading()

    def on_body(self, body: bytes) -> None:
        """Hand the parser's piece on as it is, not appended to a bytearray.

        uvicorn appends every piece to the request cycle's bytearray and `receive()` copies
        that out with `bytes(...)`: two more copies of each uploaded byte on the event loop's
        thread, under the GIL (measured with perf: ~2.5% of the server's CPU during an upload,
        as much as the parser's own copy). When nothing is waiting, the piece itself becomes
        the cycle's body, and `bytes()` of a bytes object is that same object.
        """
        self._body_seen += len(body)
        self._body_total += len(body)
        cycle = self.cycle
        if cycle.body or cycle.response_complete or self.parser.should_upgrade():
            super().on_body(body)  # pieces waiting (or an upgrade): uvicorn's own path
            return
        cycle.body = body  # type: ignore[assignment]  # bytes: receive() passes it on
        if len(body) > HIGH_WATER_LIMIT:
            self.flow.pause_reading()
        cycle.message_event.set()

    def _receiving(self, active: bool) -> None:
        if active != self._counted:
            self._counted = active
            _reads.receiving += 1 if active else -1

    # --- connections: the caps, and the deadline of a head ----------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        cap = self.max_connections
        if cap is not None and len(self.connections) > cap:
            connections.refusals.record(cap)
            transport.abort()  # its descriptor back at once, no lingering close
            return
        if self.per_client is not None:
            counted_as = self.per_client.admit(self.client[0] if self.client else None)
            if counted_as is None:
                transport.abort()
                return
            self._counted_as = counted_as
        self._start_head_timer()

    def _start_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.head_timeout, self._head_timed_out)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or not self._in_head:
            return
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # A head pipelined behind a response still being sent (a long download): a 408
            # now would land inside that response: the head gets a fresh deadline.
            self._start_head_timer()
            return
        if self._head_begun:  # a request began: say why it ends
            self.logger.info(
                "closed a connection: request head not whole in %gs (408)", self.head_timeout
            )
            self.transport.write(_RESPONSE_408)
        self.transport.close()

    # --- a client that takes no response bytes ------------------------------------------------

    def pause_writing(self) -> None:
        """The transport's buffer is full: the client has that long to take some of it."""
        super().pause_writing()
        if self._send_timer is None:
            self._watch_send(sendqueue.unsent(self.transport))

    def resume_writing(self) -> None:
        self._stop_send_timer()
        super().resume_writing()

    def _watch_send(self, pending: int) -> None:
        self._send_timer = self.loop.call_later(self.send_timeout, self._send_checked, pending)

    def _stop_send_timer(self) -> None:
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None

    def _send_checked(self, pending: int) -> None:
        self._send_timer = None
        if self.transport.get_write_buffer_size() == 0:
            return
        left = sendqueue.unsent(self.transport)
        if left < pending:  # the client took some: reading slowly, not gone
            self._watch_send(left)
            return
        self.logger.info(
            "closed a connection: the client took no response bytes for %gs", self.send_timeout
        )
        sendqueue.reset(self.transport)

    def on_message_complete(self) -> None:
        self._receiving(False)
        self._chunked = False
        super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._receiving(False)
        self._stop_head_timer()
        self._stop_send_timer()
        if self._counted_as and self.per_client is not None:
            self.per_client.release(self._counted_as)
            self._counted_as = ""
        if self._direct is not None:
            self._direct.fail(TransferInterrupted("client disconnected"))
            self._direct = None
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_begun = True
        self._head_bytes = 0
        self._body_seen = 0
        self._trailers = None
        self._framing = 0
        self._began = True
        self._chunked = False

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._trailers is not None:  # the head has ended: a field of the trailer section
            self._trailers.append((name.lower(), value))
            return
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        """A head that arrived in one read is measured here, once parsed."""
        self._in_head = False
        self._head_begun = False
        self._stop_head_timer()
        size = len(self.url) + sum(len(n) + len(v) + 4 for n, v in self.headers)
        if size > MAX_REQUEST_HEAD:
            self._refused = True
            raise HeadTooLarge  # httptools stops parsing; uvicorn answers via send_400_response
        super().on_headers_complete()
        self._receiving(True)
        self._trailers = []
        self._chunked = any(
            n == b"transfer-encoding" and b"chunked" in v.lower() for n, v in self.headers
        )
        cycle = self.cycle
        if cycle is not None and cycle.scope is self.scope:  # not an upgrade
            direct.offer(self.scope, lambda: self._claim_direct(cycle))
            extensions = self.scope.setdefault("extensions", {})
            extensions[TRAILERS] = self._trailers
            extensions[INFORMATIONAL] = lambda status, fields: self._interim(cycle, status, fields)

    def data_received(self, data: bytes) -> None:
        """A head still arriving is measured as it comes, so it is never buffered whole; so
        are the bytes of a body that are not body bytes (chunk framing, trailers)."""
        if self._in_head:
            self._head_bytes += len(data)
        body_before = self._body_total
        self._began = False
        super().data_received(data)
        # A chunked body still arriving, whose head came in an earlier read (so the read held
        # nothing of other requests pipelined before it).
        if self._chunked and not self._began:
            body = self._body_total - body_before
            # Trailer fields follow the last body byte: a read that brought body bytes ends
            # any run of them (chunk extensions, never buffered, may come between).
            self._framing = self._framing + len(data) if not body else 0
            if self._framing > MAX_REQUEST_HEAD and not self._refused:
                self._refused = True
                self.logger.info(
                    "closed a connection: over %d bytes of chunk framing or trailers",
                    MAX_REQUEST_HEAD,
                )
                self.transport.close()
                return
        if self._in_head:
            # The first bytes of a head, on a fresh connection or a kept-alive one (whose
            # keep-alive timer those bytes stopped): from now on it has head_timeout.
            self._start_head_timer()
        # Checked after parsing, so a read that ends the head and brings body bytes along
        # never counts as an oversized head; at most one read beyond the cap is buffered.
        if self._in_head and self._head_bytes > MAX_REQUEST_HEAD and not self._refused:
            self._refused = True
            self.send_400_response("")

    def send_400_response(self, msg: str) -> None:
        if not self._refused:
            super().send_400_response(msg)
            return
        self.logger.info("refused a request head over %d bytes (431)", MAX_REQUEST_HEAD)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(_RESPONSE_431)
            self.transport.close()


def _content_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    """The body's length if it is given by one Content-Length and not chunked, else None."""
    lengths = [v for n, v in headers if n == b"content-length"]
    if len(lengths) != 1 or any(n == b"transfer-encoding" for n, _ in headers):
        return None
    value = lengths[0].strip()
    return int(value) if value.isdigit() else None


def trailers(scope: Scope) -> list[tuple[bytes, bytes]] | None:
    """The request's trailer fields (names in lower case), complete once its body has been
    read to the end; None where the server's protocol does not keep them (not this one)."""
    found: list[tuple[bytes, bytes]] | None = scope.get("extensions", {}).get(TRAILERS)
    return found


def informational(scope: Scope, status: int, fields: list[tuple[str, str]]) -> bool:
    """Send a 1xx interim response before the request's final one; whether it went out (not
    on HTTP/1.0, not once the response has begun, not under another server protocol)."""
    send: Callable[[int, list[tuple[str, str]]], bool] | None = scope.get("extensions", {}).get(
        INFORMATIONAL
    )
    return send is not None and send(status, fields)


def configured(
    head_timeout: float,
    send_timeout: float,
    max_connections: int | None,
    per_client: connections.ConnectionCounts | None = None,
) -> type[BoundedHttpToolsProtocol]:
    """The protocol class with the node's deadlines (request_head_timeout, send_timeout) and
    connection caps: uvicorn builds protocols with no argument of ours."""
    settings = {
        "head_timeout": head_timeout,
        "send_timeout": send_timeout,
        "max_connections": max_connections,
        "per_client": per_client,
    }
    return type(BoundedHttpToolsProtocol.__name__, (BoundedHttpToolsProtocol,), settings)

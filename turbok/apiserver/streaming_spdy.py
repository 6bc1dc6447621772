"""SPDY/3.1, server side: the framing kubectl >= 1.30 tunnels inside a port-forward WebSocket.

kubectl port-forward speaks SPDY/3.1 (client-go's ``tools/portforward`` over
``moby/spdystream``). Since 1.30 it carries that byte stream inside a
WebSocket (subprotocol ``SPDY/3.1+portforward.k8s.io``): every binary message
is a run of bytes of the SPDY connection, frames may span messages.
``turbok.apiserver.streaming_portforward`` feeds those bytes to a
``SpdySession`` and gets ``SpdyStream``s back, one per stream the client opens.

What is implemented (https://www.chromium.org/spdy/spdy-protocol/spdy-protocol-draft3-1/):

- frames: control frames (8-byte header: control bit, version 3, type, flags,
  24-bit length) and data frames (stream id, flags, 24-bit length);
- SYN_STREAM (read, answered with an empty SYN_REPLY), DATA (both ways, FIN
  half-closes), RST_STREAM (both ways), PING (a client's is echoed), GOAWAY
  (ends the session), HEADERS (its block decompressed to keep the zlib state
  in step, then ignored); SETTINGS and WINDOW_UPDATE are read and ignored:
  spdystream implements no flow control, so neither side honours windows;
- name/value header blocks compressed with zlib over SPDY/3's dictionary, one
  compression context per direction for the whole session, each block
  ending in a sync flush (``HeaderCompressor``/``HeaderDecompressor``).

Bounds: a frame is at most 16 MiB by construction (24-bit length); a header
block decompresses to at most ``MAX_HEADER_BYTES`` (else the session ends with
GOAWAY); at most ``MAX_STREAMS`` streams are open at once (more are refused); a
stream buffers at most ``STREAM_BUFFER_BYTES`` the consumer has not read before
the session stops reading (back-pressure to the client's TCP connection).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import struct
import zlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "DICTIONARY",
    "MAX_HEADER_BYTES",
    "ControlFrame",
    "ControlType",
    "DataFrame",
    "FrameReader",
    "HeaderCompressor",
    "HeaderDecompressor",
    "ProtocolError",
    "RstStatus",
    "SpdySession",
    "SpdyStream",
    "control_frame",
    "data_frame",
]

log = logging.getLogger(__name__)

VERSION = 3
FLAG_FIN = 0x01
#: Largest header block (decompressed) a client may send; kubectl's are about 60 bytes.
MAX_HEADER_BYTES = 64 * 1024
#: Bytes one stream may hold that its consumer has not read, before the session stops reading.
STREAM_BUFFER_BYTES = 1024 * 1024
#: Largest DATA frame this side sends.
MAX_DATA_FRAME = 64 * 1024
#: Streams one session may hold open; more are refused (RST_STREAM ``REFUSED_STREAM``). kubectl opens
#: two per forwarded connection.
MAX_STREAMS = 1024


class ProtocolError(Exception):
    """The client broke the SPDY framing; the session ends."""


class ControlType(enum.IntEnum):
    SYN_STREAM = 1
    SYN_REPLY = 2
    RST_STREAM = 3
    SETTINGS = 4
    PING = 6
    GOAWAY = 7
    HEADERS = 8
    WINDOW_UPDATE = 9


class RstStatus(enum.IntEnum):
    PROTOCOL_ERROR = 1
    INVALID_STREAM = 2
    REFUSED_STREAM = 3
    UNSUPPORTED_VERSION = 4
    CANCEL = 5
    INTERNAL_ERROR = 6
    FLOW_CONTROL_ERROR = 7
    STREAM_IN_USE = 8
    STREAM_ALREADY_CLOSED = 9


# The SPDY/3 header dictionary (draft 3, section 2.6.10.1), as zlib's preset dictionary.
DICTIONARY = (
    b"\x00\x00\x00\x07options\x00\x00\x00\x04head\x00\x00\x00\x04post\x00\x00\x00\x03put"
    b"\x00\x00\x00\x06delete\x00\x00\x00\x05trace\x00\x00\x00\x06accept\x00\x00\x00\x0eaccept-charset"
    b"\x00\x00\x00\x0faccept-encoding\x00\x00\x00\x0faccept-language\x00\x00\x00\x0daccept-ranges"
    b"\x00\x00\x00\x03age\x00\x00\x00\x05allow\x00\x00\x00\x0dauthorization\x00\x00\x00\x0dcache-control"
    b"\x00\x00\x00\x0aconnection\x00\x00\x00\x0ccontent-base\x00\x00\x00\x10content-encoding"
    b"\x00\x00\x00\x10content-language\x00\x00\x00\x0econtent-length\x00\x00\x00\x10content-location"
    b"\x00\x00\x00\x0bcontent-md5\x00\x00\x00\x0dcontent-range\x00\x00\x00\x0ccontent-type"
    b"\x00\x00\x00\x04date\x00\x00\x00\x04etag\x00\x00\x00\x06expect\x00\x00\x00\x07expires"
    b"\x00\x00\x00\x04from\x00\x00\x00\x04host\x00\x00\x00\x08if-match\x00\x00\x00\x11if-modified-since"
    b"\x00\x00\x00\x0dif-none-match\x00\x00\x00\x08if-range\x00\x00\x00\x13if-unmodified-since"
    b"\x00\x00\x00\x0dlast-modified\x00\x00\x00\x08location\x00\x00\x00\x0cmax-forwards"
    b"\x00\x00\x00\x06pragma\x00\x00\x00\x12proxy-authenticate\x00\x00\x00\x13proxy-authorization"
    b"\x00\x00\x00\x05range\x00\x00\x00\x07referer\x00\x00\x00\x0bretry-after\x00\x00\x00\x06server"
    b"\x00\x00\x00\x02te\x00\x00\x00\x07trailer\x00\x00\x00\x11transfer-encoding\x00\x00\x00\x07upgrade"
    b"\x00\x00\x00\x0auser-agent\x00\x00\x00\x04vary\x00\x00\x00\x03via\x00\x00\x00\x07warning"
    b"\x00\x00\x00\x10www-authenticate\x00\x00\x00\x06method\x00\x00\x00\x03get\x00\x00\x00\x06status"
    b"\x00\x00\x00\x06200 OK\x00\x00\x00\x07version\x00\x00\x00\x08HTTP/1.1\x00\x00\x00\x03url"
    b"\x00\x00\x00\x06public\x00\x00\x00\x0aset-cookie\x00\x00\x00\x0akeep-alive\x00\x00\x00\x06origin"
    b"100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505"
    b"203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request"
    b"401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented"
    b"503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 "
    b"Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,"
    b"application/xml,application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age="
    b"gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0."
)

_U32 = struct.Struct(">I")
Headers = dict[str, list[str]]


@dataclass(frozen=True)
class ControlFrame:
    type: int
    flags: int
    payload: bytes
    version: int = VERSION


@dataclass(frozen=True)
class DataFrame:
    stream_id: int
    flags: int
    data: bytes

    @property
    def fin(self) -> bool:
        return bool(self.flags & FLAG_FIN)


def control_frame(type_: int, payload: bytes, flags: int = 0) -> bytes:
    return _U32.pack(0x80000000 | VERSION << 16 | type_) + _U32.pack(flags << 24 | len(payload)) + payload


def data_frame(stream_id: int, data: bytes, *, fin: bool = False) -> bytes:
    return _U32.pack(stream_id & 0x7FFFFFFF) + _U32.pack((FLAG_FIN if fin else 0) << 24 | len(data)) + data


class FrameReader:
    """Frames out of a byte stream that arrives in pieces of any size."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[ControlFrame | DataFrame]:
        self._buffer += data
        frames: list[ControlFrame | DataFrame] = []
        view, offset = memoryview(self._buffer), 0
        while len(view) - offset >= 8:
            first, second = _U32.unpack_from(view, offset)[0], _U32.unpack_from(view, offset + 4)[0]
            length = second & 0xFFFFFF
            if len(view) - offset < 8 + length:
                break
            payload = bytes(view[offset + 8:offset + 8 + length])
            flags = second >> 24
            if first & 0x80000000:
                frames.append(ControlFrame(first & 0xFFFF, flags, payload, (first >> 16) & 0x7FFF))
            else:
                frames.append(DataFrame(first & 0x7FFFFFFF, flags, payload))
            offset += 8 + length
        view.release()
        del self._buffer[:offset]
        return frames


def encode_headers(headers: Mapping[str, Sequence[str]]) -> bytes:
    """A name/value block: count, then length-prefixed lower-case names and NUL-joined values."""
    out = [_U32.pack(len(headers))]
    for name, values in headers.items():
        raw_name, raw_value = name.lower().encode(), b"\x00".join(v.encode() for v in values)
        out += [_U32.pack(len(raw_name)), raw_name, _U32.pack(len(raw_value)), raw_value]
    return b"".join(out)


def decode_headers(block: bytes) -> Headers:
    headers: Headers = {}
    try:
        (count,), offset = _U32.unpack_from(block, 0), 4
        for _ in range(count):
            (size,) = _U32.unpack_from(block, offset)
            name = block[offset + 4:offset + 4 + size].decode("latin-1").lower()
            offset += 4 + size
            (size,) = _U32.unpack_from(block, offset)
            value = block[offset + 4:offset + 4 + size].decode("latin-1")
            offset += 4 + size
            if offset > len(block):
                raise ProtocolError("a header block ends inside a name or value")
            headers.setdefault(name, []).extend(value.split("\x00"))
    except struct.error:
        raise ProtocolError("a header block ends early") from None
    return headers


class HeaderCompressor:
    """This side's header blocks: one zlib stream over the SPDY dictionary, flushed after each block."""

    def __init__(self) -> None:
        self._z = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, 15, 8, zlib.Z_DEFAULT_STRATEGY,
                                   zdict=DICTIONARY)

    def compress(self, headers: Mapping[str, Sequence[str]]) -> bytes:
        return self._z.compress(encode_headers(headers)) + self._z.flush(zlib.Z_SYNC_FLUSH)


class HeaderDecompressor:
    """The client's header blocks, in the order they came (the zlib state spans the session)."""

    def __init__(self) -> None:
        self._z = zlib.decompressobj(zdict=DICTIONARY)

    def decompress(self, block: bytes) -> Headers:
        try:
            raw = self._z.decompress(block, MAX_HEADER_BYTES)
        except zlib.error as e:
            raise ProtocolError(f"a header block does not decompress: {e}") from None
        if self._z.unconsumed_tail:
            raise ProtocolError(f"a header block decompresses to more than {MAX_HEADER_BYTES} bytes")
        return decode_headers(raw)


class SpdyStream:
    """One stream the client opened: its headers, what it sends (``read``) and what we send (``write``)."""

    def __init__(self, session: SpdySession, stream_id: int, headers: Headers) -> None:
        self.session = session
        self.id = stream_id
        self.headers = headers
        self._inbound: asyncio.Queue[bytes] = asyncio.Queue()
        self._buffered = 0
        self._room = asyncio.Event()
        self._room.set()
        self.remote_closed = False  # the client sent FIN or RST: no more data from it
        self.local_closed = False  # we sent FIN or RST
        self.reset = asyncio.Event()  # the client reset the stream, or the session ended

    def header(self, name: str) -> str:
        values = self.headers.get(name.lower())
        return values[0] if values else ""

    async def read(self) -> bytes:
        """The next bytes the client sent; b"" once it half-closed (FIN) or reset the stream."""
        if self._inbound.empty() and self.remote_closed:
            return b""
        data = await self._inbound.get()
        self._buffered -= len(data)
        if self._buffered <= STREAM_BUFFER_BYTES:
            self._room.set()
        return data

    async def write(self, data: bytes) -> None:
        if self.local_closed or self.reset.is_set():
            raise ConnectionResetError(f"SPDY stream {self.id} is closed")
        for start in range(0, len(data), MAX_DATA_FRAME):
            await self.session.send(data_frame(self.id, data[start:start + MAX_DATA_FRAME]))

    async def close(self) -> None:
        """Half-close: an empty DATA frame with FIN."""
        if not self.local_closed and not self.reset.is_set():
            self.local_closed = True
            await self.session.send(data_frame(self.id, b"", fin=True))
            self.session.forget_if_done(self)

    async def send_reset(self, status: RstStatus = RstStatus.CANCEL) -> None:
        if not self.local_closed:
            self.local_closed = True
            self._end_remote()
            await self.session.send(control_frame(ControlType.RST_STREAM, _U32.pack(self.id) + _U32.pack(status)))
            self.session.forget_if_done(self)

    # -- called by the session --

    def _deliver(self, data: bytes) -> None:
        if data and not self.remote_closed:
            self._buffered += len(data)
            self._inbound.put_nowait(data)
            if self._buffered > STREAM_BUFFER_BYTES:
                self._room.clear()

    def _end_remote(self) -> None:
        if not self.remote_closed:
            self.remote_closed = True
            self._inbound.put_nowait(b"")  # wakes a reader waiting on an empty queue
        self._room.set()

    def _on_reset(self) -> None:
        self.local_closed = True
        self.reset.set()
        self._end_remote()


class SpdySession:
    """A SPDY/3.1 server session over bytes from ``feed`` and a ``send`` of bytes.

    ``on_stream(stream)`` is called for every SYN_STREAM once it has been
    answered; it returns a reason to refuse it (the stream is reset) or None.
    """

    def __init__(self, send: Callable[[bytes], Awaitable[None]],
                 on_stream: Callable[[SpdyStream], str | None]) -> None:
        self._send = send
        self._on_stream = on_stream
        self._reader = FrameReader()
        self._compressor = HeaderCompressor()
        self._decompressor = HeaderDecompressor()
        self._lock = asyncio.Lock()
        self.streams: dict[int, SpdyStream] = {}
        self.last_stream_id = 0
        self.gone_away = False

    async def send(self, frame: bytes) -> None:
        async with self._lock:
            await self._send(frame)

    async def feed(self, data: bytes) -> None:
        """Handle the bytes of one message; raises ``ProtocolError`` when the client broke the framing."""
        for frame in self._reader.feed(data):
            if isinstance(frame, DataFrame):
                await self._data(frame)
            else:
                await self._control(frame)

    async def _data(self, frame: DataFrame) -> None:
        stream = self.streams.get(frame.stream_id)
        if stream is None:
            return  # already gone (spdystream drops these too)
        stream._deliver(frame.data)
        if frame.fin:
            stream._end_remote()
            self.forget_if_done(stream)
        elif not stream._room.is_set():
            await stream._room.wait()  # back-pressure: stop reading until the consumer catches up

    async def _control(self, frame: ControlFrame) -> None:
        if frame.version != VERSION:
            raise ProtocolError(f"SPDY version {frame.version} is not supported (only 3)")
        p = frame.payload
        if frame.type == ControlType.SYN_STREAM:
            if len(p) < 10:
                raise ProtocolError("SYN_STREAM is too short")
            stream_id = _U32.unpack_from(p, 0)[0] & 0x7FFFFFFF
            headers = self._decompressor.decompress(p[10:])
            await self._open(stream_id, headers, fin=bool(frame.flags & FLAG_FIN))
        elif frame.type == ControlType.HEADERS:
            if len(p) < 4:
                raise ProtocolError("HEADERS is too short")
            self._decompressor.decompress(p[4:])
        elif frame.type == ControlType.RST_STREAM:
            if len(p) != 8:
                raise ProtocolError("RST_STREAM must be 8 bytes")
            stream = self.streams.pop(_U32.unpack_from(p, 0)[0] & 0x7FFFFFFF, None)
            if stream is not None:
                stream._on_reset()
        elif frame.type == ControlType.PING:
            if len(p) != 4:
                raise ProtocolError("PING must be 4 bytes")
            if _U32.unpack_from(p, 0)[0] % 2 == 1:  # the client's (odd ids); a server's own are even
                await self.send(control_frame(ControlType.PING, p))
        elif frame.type == ControlType.GOAWAY:
            self.gone_away = True
        elif frame.type == ControlType.SYN_REPLY:
            raise ProtocolError("a client may not send SYN_REPLY to a server that opens no streams")
        # SETTINGS, WINDOW_UPDATE and unknown types are ignored (draft 3: "MUST ignore unknown types").

    async def _open(self, stream_id: int, headers: Headers, *, fin: bool) -> None:
        if stream_id % 2 == 0 or stream_id <= self.last_stream_id or self.gone_away:
            await self.send(control_frame(ControlType.RST_STREAM,
                                          _U32.pack(stream_id) + _U32.pack(RstStatus.PROTOCOL_ERROR)))
            return
        self.last_stream_id = stream_id
        if len(self.streams) >= MAX_STREAMS:
            await self.send(control_frame(ControlType.RST_STREAM,
                                          _U32.pack(stream_id) + _U32.pack(RstStatus.REFUSED_STREAM)))
            return
        stream = SpdyStream(self, stream_id, headers)
        self.streams[stream_id] = stream
        if fin:
            stream._end_remote()
        await self.send(control_frame(ControlType.SYN_REPLY, _U32.pack(stream_id) + self._compressor.compress({})))
        refusal = self._on_stream(stream)
        if refusal is not None:
            log.debug("port-forward: refusing SPDY stream %d: %s", stream_id, refusal)
            await stream.send_reset(RstStatus.CANCEL)

    def forget_if_done(self, stream: SpdyStream) -> None:
        if stream.local_closed and stream.remote_closed:
            self.streams.pop(stream.id, None)

    async def goaway(self) -> None:
        """Tell the client no more streams will be served (status OK)."""
        if not self.gone_away:
            self.gone_away = True
            await self.send(control_frame(ControlType.GOAWAY, _U32.pack(self.last_stream_id) + _U32.pack(0)))

    def close(self) -> None:
        """The connection is gone: every stream reads EOF and refuses writes."""
        self.gone_away = True
        for stream in list(self.streams.values()):
            stream._on_reset()
        self.streams.clear()

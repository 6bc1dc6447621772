"""SPDY/3.1 server framing: frames split anywhere, zlib header blocks over the SPDY dictionary, a session's rules."""

from __future__ import annotations

import asyncio
import random
import struct
import zlib

import pytest

from turbok.apiserver import streaming_spdy as spdy
from turbok.apiserver.streaming_spdy import (
    DICTIONARY,
    ControlFrame,
    ControlType,
    DataFrame,
    FrameReader,
    HeaderCompressor,
    HeaderDecompressor,
    ProtocolError,
    SpdySession,
    SpdyStream,
    control_frame,
    data_frame,
)

U32 = struct.Struct(">I")


class Client:
    """The client's half, built from the same framing, as spdystream would frame it."""

    def __init__(self) -> None:
        self.compressor = HeaderCompressor()
        self.decompressor = HeaderDecompressor()
        self.reader = FrameReader()

    def syn_stream(self, stream_id: int, headers: dict[str, list[str]], *, fin: bool = False) -> bytes:
        payload = U32.pack(stream_id) + U32.pack(0) + bytes((0, 0)) + self.compressor.compress(headers)
        return control_frame(ControlType.SYN_STREAM, payload, flags=1 if fin else 0)


class Harness:
    def __init__(self, refuse: str | None = None) -> None:
        self.sent: list[bytes] = []
        self.opened: list[SpdyStream] = []
        self.refuse = refuse
        self.session = SpdySession(self._send, self._on_stream)
        self.client = Client()

    async def _send(self, frame: bytes) -> None:
        self.sent.append(frame)

    def _on_stream(self, stream: SpdyStream) -> str | None:
        self.opened.append(stream)
        return self.refuse

    def frames(self) -> list[ControlFrame | DataFrame]:
        out = self.client.reader.feed(b"".join(self.sent))
        self.sent.clear()
        return out


def test_the_dictionary_is_spdy3s() -> None:
    # The dictionary is a zlib preset: a stream compressed over it names it by its Adler-32, and the
    # SPDY/3 draft's table starts with the "options" entry and ends with "enq=0.".
    assert DICTIONARY.startswith(b"\x00\x00\x00\x07options") and DICTIONARY.endswith(b",*,enq=0.")
    assert len(DICTIONARY) == 1423
    block = HeaderCompressor().compress({"port": ["8080"]})
    assert block[2:6] == U32.pack(zlib.adler32(DICTIONARY))  # FDICT header carries the dictionary id


def test_frames_come_out_whole_however_the_bytes_are_cut() -> None:
    frames = [data_frame(1, b"hello"), control_frame(ControlType.PING, U32.pack(1)),
              data_frame(3, b"", fin=True), data_frame(5, bytes(range(256)) * 300)]
    wire = b"".join(frames)
    rng = random.Random(7)
    for _ in range(20):
        reader, got, at = FrameReader(), [], 0
        while at < len(wire):
            step = rng.randint(1, 9000)
            got += reader.feed(wire[at:at + step])
            at += step
        assert got == [DataFrame(1, 0, b"hello"), ControlFrame(ControlType.PING, 0, U32.pack(1)),
                       DataFrame(3, 1, b""), DataFrame(5, 0, bytes(range(256)) * 300)]
        assert isinstance(got[2], DataFrame) and got[2].fin
        assert isinstance(got[0], DataFrame) and not got[0].fin


def test_header_blocks_share_one_zlib_context_per_direction() -> None:
    out, back = HeaderCompressor(), HeaderDecompressor()
    first = {"streamtype": ["error"], "port": ["8888"], "requestid": ["0"]}
    second = {"streamtype": ["data"], "port": ["8888"], "requestid": ["0"], "multi": ["a", "b"]}
    a, b = out.compress(first), out.compress(second)
    assert back.decompress(a) == first and back.decompress(b) == second
    # The second block alone means nothing to a fresh decompressor: the context carries over.
    with pytest.raises(ProtocolError):
        HeaderDecompressor().decompress(b)


def test_names_are_lower_case_on_the_wire_and_values_nul_joined() -> None:
    raw = spdy.encode_headers({"StreamType": ["data"], "X": ["1", "2"]})
    assert b"streamtype" in raw and b"StreamType" not in raw and b"1\x002" in raw
    assert spdy.decode_headers(raw) == {"streamtype": ["data"], "x": ["1", "2"]}
    with pytest.raises(ProtocolError):
        spdy.decode_headers(raw[:-3])


def test_a_header_bomb_is_refused() -> None:
    z = zlib.compressobj(zdict=DICTIONARY)
    block = z.compress(U32.pack(1) + U32.pack(4) + b"name" + U32.pack(10 ** 6) + b"a" * 10 ** 6)
    block += z.flush(zlib.Z_SYNC_FLUSH)
    assert len(block) < 10_000
    with pytest.raises(ProtocolError, match="more than"):
        HeaderDecompressor().decompress(block)


async def test_a_stream_is_answered_read_written_and_half_closed() -> None:
    h = Harness()
    await h.session.feed(h.client.syn_stream(1, {"streamtype": ["data"], "port": ["80"]}))
    (reply,) = h.frames()
    assert isinstance(reply, ControlFrame) and reply.type == ControlType.SYN_REPLY
    assert U32.unpack_from(reply.payload)[0] == 1 and h.client.decompressor.decompress(reply.payload[4:]) == {}
    (stream,) = h.opened
    assert stream.header("streamType") == "data" and stream.header("port") == "80"
    await h.session.feed(data_frame(1, b"abc") + data_frame(1, b"def", fin=True))
    assert await stream.read() == b"abc" and await stream.read() == b"def" and await stream.read() == b""
    await stream.write(b"x" * (spdy.MAX_DATA_FRAME + 1))
    await stream.close()
    frames = h.frames()
    assert [len(f.data) for f in frames if isinstance(f, DataFrame)] == [spdy.MAX_DATA_FRAME, 1, 0]
    assert isinstance(frames[-1], DataFrame) and frames[-1].fin
    assert 1 not in h.session.streams  # closed both ways: forgotten
    with pytest.raises(ConnectionResetError):
        await stream.write(b"late")


async def test_pings_from_the_client_are_echoed_and_its_resets_end_a_stream() -> None:
    h = Harness()
    await h.session.feed(control_frame(ControlType.PING, U32.pack(7)) + control_frame(ControlType.PING, U32.pack(8)))
    assert h.frames() == [ControlFrame(ControlType.PING, 0, U32.pack(7))]  # odd: the client's; even: ours
    await h.session.feed(h.client.syn_stream(3, {"port": ["1"]}))
    (stream,) = h.opened
    reading = asyncio.ensure_future(stream.read())
    await asyncio.sleep(0)
    await h.session.feed(control_frame(ControlType.RST_STREAM, U32.pack(3) + U32.pack(spdy.RstStatus.CANCEL)))
    assert await reading == b"" and stream.reset.is_set()
    # WINDOW_UPDATE and SETTINGS are ignored (spdystream keeps no windows); HEADERS keep the zlib state.
    await h.session.feed(control_frame(ControlType.WINDOW_UPDATE, U32.pack(3) + U32.pack(100)))
    await h.session.feed(control_frame(ControlType.HEADERS, U32.pack(3) + h.client.compressor.compress({"a": ["b"]})))
    await h.session.feed(h.client.syn_stream(5, {"port": ["2"]}))
    assert h.opened[-1].header("port") == "2"


async def test_refused_streams_and_bad_ids_are_reset() -> None:
    h = Harness(refuse="no port header")
    await h.session.feed(h.client.syn_stream(1, {}))
    frames = h.frames()
    assert [f.type for f in frames if isinstance(f, ControlFrame)] == [ControlType.SYN_REPLY, ControlType.RST_STREAM]
    h.refuse = None
    await h.session.feed(h.client.syn_stream(2, {}))  # even: a server's id
    await h.session.feed(h.client.syn_stream(1, {}))  # not increasing
    resets = [f for f in h.frames() if isinstance(f, ControlFrame)]
    assert [f.type for f in resets] == [ControlType.RST_STREAM] * 2
    assert [U32.unpack_from(f.payload, 4)[0] for f in resets] == [spdy.RstStatus.PROTOCOL_ERROR] * 2


async def test_protocol_errors_end_the_session() -> None:
    h = Harness()
    with pytest.raises(ProtocolError, match="version"):
        await h.session.feed(b"\x80\x02\x00\x06" + U32.pack(4) + U32.pack(1))
    with pytest.raises(ProtocolError):
        await Harness().session.feed(control_frame(ControlType.SYN_STREAM, U32.pack(1)))
    with pytest.raises(ProtocolError):
        await Harness().session.feed(control_frame(ControlType.SYN_REPLY, U32.pack(1)))


async def test_a_slow_consumer_holds_the_session_back_and_close_wakes_everyone() -> None:
    h = Harness()
    await h.session.feed(h.client.syn_stream(1, {"port": ["1"]}))
    (stream,) = h.opened
    big = b"z" * (spdy.STREAM_BUFFER_BYTES + 1)
    feeding = asyncio.ensure_future(h.session.feed(data_frame(1, big[:1 << 20]) + data_frame(1, big[1 << 20:])))
    await asyncio.sleep(0.01)
    assert not feeding.done()  # over the buffer: no more reading until the consumer reads
    await stream.read()
    await asyncio.wait_for(feeding, 1)
    h.session.close()
    assert stream.reset.is_set()
    assert await stream.read() == big[1 << 20:] and await stream.read() == b""
    with pytest.raises(ConnectionResetError):
        await stream.write(b"after the end")


async def test_a_session_holds_a_bounded_number_of_streams(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spdy, "MAX_STREAMS", 2)
    h = Harness()
    for stream_id in (1, 3, 5):
        await h.session.feed(h.client.syn_stream(stream_id, {"port": ["1"]}))
    assert [s.id for s in h.opened] == [1, 3]
    last = [f for f in h.frames() if isinstance(f, ControlFrame)][-1]
    assert last.type == ControlType.RST_STREAM and U32.unpack_from(last.payload, 4)[0] == spdy.RstStatus.REFUSED_STREAM

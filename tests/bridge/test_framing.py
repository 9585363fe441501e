"""bridge.framing: {packet, N}, line and raw framing, encoders and incremental decoders."""

from __future__ import annotations

import pytest

from bridge.framing import (
    FrameTooLarge,
    FramingError,
    LineDecoder,
    PacketDecoder,
    RawDecoder,
    encode_frame,
    frame_limit,
    make_decoder,
    make_encoder,
)

PACKETS = (1, 2, 4)


def feed_bytewise(decoder, data: bytes) -> list[bytes]:
    frames: list[bytes] = []
    for i in range(len(data)):
        frames.extend(decoder.feed(data[i : i + 1]))
    return frames


class TestEncodeFrame:
    @pytest.mark.parametrize(
        ("packet", "expected"),
        [(1, b"\x03abc"), (2, b"\x00\x03abc"), (4, b"\x00\x00\x00\x03abc")],
    )
    def test_prefixes_the_big_endian_length(self, packet, expected):
        assert encode_frame(b"abc", packet) == expected

    @pytest.mark.parametrize("packet", PACKETS)
    def test_empty_frame_is_just_a_zero_header(self, packet):
        assert encode_frame(b"", packet) == b"\x00" * packet

    @pytest.mark.parametrize(("packet", "limit"), [(1, 255), (2, 65535)])
    def test_largest_frame_fits_and_one_more_byte_does_not(self, packet, limit):
        assert encode_frame(b"x" * limit, packet)[:packet] == b"\xff" * packet
        with pytest.raises(FrameTooLarge) as info:
            encode_frame(b"x" * (limit + 1), packet)
        assert str(limit + 1) in str(info.value)
        assert str(limit) in str(info.value)

    def test_packet_4_encodes_lengths_beyond_65535(self):
        assert encode_frame(b"x" * 65536, 4)[:4] == b"\x00\x01\x00\x00"

    def test_frame_too_large_is_a_framing_error_and_a_value_error(self):
        assert issubclass(FrameTooLarge, FramingError)
        assert issubclass(FramingError, ValueError)

    @pytest.mark.parametrize("packet", [0, 3, 8, "4", None])
    def test_unsupported_packet_size_is_refused(self, packet):
        with pytest.raises(ValueError, match="packet must be 1, 2 or 4"):
            encode_frame(b"x", packet)

    def test_frame_limits(self):
        assert [frame_limit(p) for p in PACKETS] == [255, 65535, 2**32 - 1]


class TestPacketDecoder:
    @pytest.mark.parametrize("packet", PACKETS)
    def test_round_trips_frames_including_empty_ones(self, packet):
        frames = [b"one", b"", b"three\x00\xff", b""]
        stream = b"".join(encode_frame(f, packet) for f in frames)
        decoder = PacketDecoder(packet)
        assert decoder.feed(stream) == frames
        assert decoder.eof() == []

    @pytest.mark.parametrize("packet", PACKETS)
    def test_frames_split_byte_by_byte(self, packet):
        frames = [b"hello", b"", b"x" * 300 if packet > 1 else b"x" * 200]
        stream = b"".join(encode_frame(f, packet) for f in frames)
        decoder = PacketDecoder(packet)
        assert feed_bytewise(decoder, stream) == frames
        assert decoder.eof() == []

    @pytest.mark.parametrize("packet", PACKETS)
    def test_split_at_every_position(self, packet):
        stream = encode_frame(b"abc", packet) + encode_frame(b"defg", packet)
        for cut in range(len(stream) + 1):
            decoder = PacketDecoder(packet)
            got = decoder.feed(stream[:cut]) + decoder.feed(stream[cut:])
            assert got == [b"abc", b"defg"], cut

    def test_several_frames_and_a_partial_one_in_one_feed(self):
        decoder = PacketDecoder(2)
        stream = encode_frame(b"a", 2) + encode_frame(b"bb", 2) + encode_frame(b"ccc", 2)[:3]
        assert decoder.feed(stream) == [b"a", b"bb"]
        assert decoder.feed(b"cc") == [b"ccc"]

    def test_empty_feed_returns_nothing(self):
        decoder = PacketDecoder(4)
        assert decoder.feed(b"") == []
        assert decoder.eof() == []

    @pytest.mark.parametrize(
        ("packet", "size"), [(1, 255), (2, 255), (2, 256), (2, 65535), (4, 65535), (4, 65536)]
    )
    def test_boundary_sizes(self, packet, size):
        payload = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
        decoder = PacketDecoder(packet)
        assert decoder.feed(encode_frame(payload, packet)) == [payload]

    def test_accepts_bytearray_and_memoryview_chunks(self):
        stream = encode_frame(b"abc", 4)
        decoder = PacketDecoder(4)
        assert decoder.feed(bytearray(stream[:2])) == []
        assert decoder.feed(memoryview(stream)[2:]) == [b"abc"]

    def test_frames_do_not_alias_the_callers_buffer(self):
        chunk = bytearray(encode_frame(b"abc", 1))
        (frame,) = PacketDecoder(1).feed(chunk)
        chunk[1:] = b"zzz"
        assert frame == b"abc"
        assert type(frame) is bytes

    def test_declared_length_beyond_max_length_is_refused(self):
        decoder = PacketDecoder(4, max_length=10)
        assert decoder.feed(encode_frame(b"x" * 10, 4)) == [b"x" * 10]
        with pytest.raises(FrameTooLarge, match="declared frame length 11 exceeds max_length 10"):
            # Only the header is needed to know: the payload is never waited for.
            decoder.feed(b"\x00\x00\x00\x0b")

    def test_max_length_is_capped_by_the_header(self):
        decoder = PacketDecoder(1, max_length=10**6)
        assert decoder.feed(encode_frame(b"x" * 255, 1)) == [b"x" * 255]

    def test_negative_max_length_is_refused(self):
        with pytest.raises(ValueError):
            PacketDecoder(4, max_length=-1)

    def test_eof_inside_the_header(self):
        decoder = PacketDecoder(4)
        decoder.feed(b"\x00\x00")
        with pytest.raises(FramingError, match=r"mid-frame.*2 of the 4 header bytes"):
            decoder.eof()

    def test_eof_inside_the_payload(self):
        decoder = PacketDecoder(2)
        decoder.feed(encode_frame(b"hello", 2)[:-2])
        with pytest.raises(FramingError, match="3 of the 5 bytes"):
            decoder.eof()

    def test_a_large_frame_fed_in_small_chunks_is_reassembled(self):
        payload = b"0123456789" * 100_000  # 1 MB in 1000 chunks: must not go quadratic
        stream = encode_frame(payload, 4)
        decoder = PacketDecoder(4)
        frames: list[bytes] = []
        for i in range(0, len(stream), 1000):
            frames.extend(decoder.feed(stream[i : i + 1000]))
        assert frames == [payload]


class TestLineDecoder:
    def test_lines_without_their_newline(self):
        decoder = LineDecoder()
        assert decoder.feed(b"one\ntwo\n\nthree\r\n") == [b"one", b"two", b"", b"three\r"]
        assert decoder.eof() == []

    def test_lines_split_byte_by_byte(self):
        decoder = LineDecoder()
        assert feed_bytewise(decoder, b"ab\n\ncd\n") == [b"ab", b"", b"cd"]

    def test_trailing_partial_line_is_returned_at_eof(self):
        decoder = LineDecoder()
        assert decoder.feed(b"done\npart") == [b"done"]
        assert decoder.feed(b"ial") == []
        assert decoder.eof() == [b"partial"]

    def test_line_of_exactly_max_line_is_accepted(self):
        decoder = LineDecoder(max_line=5)
        assert decoder.feed(b"12345\n") == [b"12345"]
        assert decoder.feed(b"12345") == []
        assert decoder.eof() == [b"12345"]

    def test_complete_line_longer_than_max_line_is_refused(self):
        with pytest.raises(FramingError, match="max_line=5"):
            LineDecoder(max_line=5).feed(b"123456\n")

    def test_unterminated_line_longer_than_max_line_is_refused_early(self):
        decoder = LineDecoder(max_line=5)
        assert decoder.feed(b"ok\n1234") == [b"ok"]
        with pytest.raises(FramingError, match="max_line=5"):
            decoder.feed(b"56")

    def test_a_long_line_in_small_chunks_is_linear(self):
        decoder = LineDecoder(max_line=2_000_000)
        for _ in range(1000):
            assert decoder.feed(b"x" * 1000) == []
        assert decoder.feed(b"\n") == [b"x" * 1_000_000]


class TestRawDecoder:
    def test_every_chunk_is_a_frame(self):
        decoder = RawDecoder()
        assert decoder.feed(b"abc") == [b"abc"]
        assert decoder.feed(b"\n\x00") == [b"\n\x00"]
        assert decoder.feed(b"") == []
        assert decoder.eof() == []


class TestFactories:
    @pytest.mark.parametrize("packet", PACKETS)
    def test_make_decoder_packet(self, packet):
        decoder = make_decoder(packet)
        assert isinstance(decoder, PacketDecoder)
        assert decoder.feed(encode_frame(b"x", packet)) == [b"x"]

    def test_make_decoder_packet_with_max_length(self):
        with pytest.raises(FrameTooLarge):
            make_decoder(2, max_length=1).feed(b"\x00\x02")

    def test_make_decoder_line_and_raw(self):
        assert isinstance(make_decoder("line"), LineDecoder)
        assert make_decoder("line", 3).max_line == 3
        assert isinstance(make_decoder("raw"), RawDecoder)

    @pytest.mark.parametrize("mode", [0, 3, "packet", True, None])
    def test_unknown_mode_is_refused(self, mode):
        with pytest.raises(ValueError, match="unknown framing mode"):
            make_decoder(mode)
        with pytest.raises(ValueError, match="unknown framing mode"):
            make_encoder(mode)

    @pytest.mark.parametrize("mode", [1, 2, 4, "line", "raw"])
    def test_encoder_and_decoder_agree(self, mode):
        encode, decoder = make_encoder(mode), make_decoder(mode)
        assert decoder.feed(encode(b"payload")) + decoder.eof() == [b"payload"]

    def test_line_encoder_refuses_embedded_newlines(self):
        with pytest.raises(FramingError):
            make_encoder("line")(b"two\nlines")

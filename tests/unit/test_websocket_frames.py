"""Following WebSocket frame boundaries in a byte stream (for a polite close)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from baton.proxy.websocket import FrameCursor, close_frame


def frame(payload: bytes, *, masked: bool, opcode: int = 0x2) -> bytes:
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, (0x80 if masked else 0) | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, (0x80 if masked else 0) | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, (0x80 if masked else 0) | 127)) + n.to_bytes(8, "big")
    if masked:
        mask = b"\x01\x02\x03\x04"
        return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + payload


@settings(deadline=None, max_examples=60)
@given(
    sizes=st.lists(st.sampled_from([0, 1, 5, 125, 126, 127, 300, 65535, 65536, 70000]), max_size=6),
    masked=st.booleans(),
    cut=st.integers(min_value=1, max_value=5000),
)
def test_boundaries_are_found_however_the_bytes_are_split(
    sizes: list[int], masked: bool, cut: int
) -> None:
    frames = [frame(b"x" * n, masked=masked) for n in sizes]
    stream = b"".join(frames)
    ends = set()
    pos = 0
    for f in frames:
        pos += len(f)
        ends.add(pos)
    cursor = FrameCursor()
    fed = 0
    while fed < len(stream):
        piece = stream[fed : fed + cut]
        # Feed byte by byte near boundaries would be slow; check at every piece end.
        cursor.feed(piece)
        fed += len(piece)
        assert cursor.at_boundary == (fed in ends or fed == 0), (fed, sorted(ends))
    assert cursor.at_boundary


def test_mid_frame_is_not_a_boundary() -> None:
    data = frame(b"hello world", masked=True)
    cursor = FrameCursor()
    cursor.feed(data[:1])
    assert not cursor.at_boundary  # half a header
    cursor.feed(data[1:8])
    assert not cursor.at_boundary  # header done, payload pending
    cursor.feed(data[8:])
    assert cursor.at_boundary


def test_close_frames_carry_1001() -> None:
    assert close_frame(masked=False) == b"\x88\x02\x03\xe9"
    masked = close_frame(masked=True)
    assert masked[:2] == b"\x88\x82"
    mask, payload = masked[2:6], masked[6:]
    assert bytes(b ^ mask[i % 4] for i, b in enumerate(payload)) == b"\x03\xe9"

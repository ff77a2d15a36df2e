"""The fast NATS header parser gives exactly nats-py's answer."""

from __future__ import annotations

from hypothesis import given, strategies as st

from services.nats_io import _parse_header_lines, nats_py_parse_header_lines

CASES = [
    b"Nats-Msg-Id: abc\r\nTouchline-Workspace: ws\r\nTouchline-Received-At: 2026-01-01T00:00:00+00:00\r\n\r\n",
    b"Name:Value\r\nName2:\tv\r\n bad name: x\r\nno colon\r\n\xff\xfe: x\r\nk: \xff\r\n: empty\r\nA B: c\r\n",
    b"",
    b"\r\n\r\n",
]


def original(raw: bytes) -> dict[str, str]:
    assert nats_py_parse_header_lines is not None and nats_py_parse_header_lines is not _parse_header_lines
    return nats_py_parse_header_lines(raw)


def test_known_cases() -> None:
    for raw in CASES:
        assert _parse_header_lines(raw) == original(raw), raw


@given(st.lists(st.tuples(st.binary(max_size=12), st.sampled_from([b":", b": ", b"", b" : "]), st.binary(max_size=12))))
def test_any_header_block(lines) -> None:
    raw = b"\r\n".join(name + sep + value for name, sep, value in lines)
    assert _parse_header_lines(raw) == original(raw)

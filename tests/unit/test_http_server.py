"""The API's transport sends a response's head and body, written in one turn of the loop, at once."""

from __future__ import annotations

import asyncio

from services.runtime.http_server import CoalescingTransport


class Recorded:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        assert not self.closed
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str):
        return ("127.0.0.1", 1) if name == "peername" else None


async def _writes_in_turns() -> Recorded:
    raw = Recorded()
    transport = CoalescingTransport(raw)  # type: ignore[arg-type]
    transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
    transport.write(b"{}")
    assert raw.writes == []  # not before the end of this turn
    await asyncio.sleep(0)
    transport.write(b"HTTP/1.1 204 No Content\r\n\r\n")
    await asyncio.sleep(0)
    transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
    transport.close()  # what was written still goes out, before the close
    assert transport.get_extra_info("peername") == ("127.0.0.1", 1)
    return raw


def test_what_is_written_in_one_turn_goes_out_in_one_write_and_close_sends_it_first():
    raw = asyncio.run(_writes_in_turns())
    assert raw.writes == [
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}",
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
    ]
    assert raw.closed

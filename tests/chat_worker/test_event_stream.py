"""Reading the model's event stream as lines of bytes, whatever the chunking and line ends."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx2
import pytest

from services.chat_worker.llm import MAX_EVENT_LINE_BYTES, StreamCut, _event_stream_lines


async def _lines(*chunks: bytes) -> list[bytes]:
    async def body() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    response = httpx2.Response(200, content=body())
    return [line async for line in _event_stream_lines(response)]


@pytest.mark.parametrize("end", [b"\n", b"\r\n", b"\r"])
async def test_every_line_end_of_the_format_splits_lines(end: bytes) -> None:
    stream = b'data: {"a": 1}' + end + end + b"data: [DONE]" + end + end
    # One chunk, and the same bytes one at a time (line ends split across chunks).
    whole = [line for line in await _lines(stream) if line]
    split = [line for line in await _lines(*(bytes([b]) for b in stream)) if line]
    assert whole == split == [b'data: {"a": 1}', b"data: [DONE]"]


async def test_a_last_line_without_its_end_is_still_read() -> None:
    assert await _lines(b"data: x\n", b"data: y") == [b"data: x", b"data: y"]


async def test_multibyte_text_split_inside_a_character_stays_whole() -> None:
    data = 'data: {"t": "ünïcödé 日本"}\n'.encode()
    cut = data.index("日".encode()) + 1
    assert await _lines(data[:cut], data[cut:]) == [data.rstrip(b"\n")]


async def test_a_line_that_never_ends_is_cut_not_buffered_without_bound() -> None:
    chunk = b"x" * 65536
    with pytest.raises(StreamCut):
        await _lines(b"data: ", *[chunk] * (MAX_EVENT_LINE_BYTES // len(chunk) + 1))

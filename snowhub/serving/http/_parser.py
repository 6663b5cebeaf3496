"""Request bodies read and parsed without stalling the event loop.

:func:`read_body` reads a body chunk by chunk into one buffer, never past a limit. :class:`BodyParser` turns an
OIP inference body into a small JSON header and its tensors' bytes (:func:`snowhub.serving.http._body.normalise`):
on the event loop when the JSON part is small (up to :data:`INLINE_JSON_BYTES`, a few ms), else in a child
process that runs ``_body.py`` as a script (json and NumPy only). Python's JSON parser holds the GIL for the
whole parse, so a thread would not do: a 168 MB JSON tensor kept ``/v2/health/live`` waiting 15 s.
"""

from __future__ import annotations

import asyncio
import json
import sys

from fastapi import Request

from snowhub.serving.http import _body
from snowhub.serving.http._errors import ServeError

INLINE_JSON_BYTES = 256 << 10


async def read_body(request: Request, limit: int) -> list[bytes]:
    """The request's body as the chunks it arrived in (at most `limit` bytes together: 413 beyond, by
    Content-Length or as it streams). Kept apart: joining or zero-filling a buffer of hundreds of MB holds the
    event loop for as long as the copy takes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ServeError(413, f"the request body is {int(declared):,} bytes, over the limit of {limit:,} bytes "
                              "(derived from --max-images and --max-image-bytes)")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ServeError(413, f"the request body is over the limit of {limit:,} bytes (derived from "
                                  "--max-images and --max-image-bytes)")
        if chunk:
            chunks.append(chunk)
    return chunks


def header_length_of(request: Request) -> int | None:
    """``Inference-Header-Content-Length`` (binary tensor data extension), None when absent.

    Raises:
        ServeError: 400 when it is not a non-negative integer.
    """
    value = request.headers.get("inference-header-content-length")
    if value is None:
        return None
    if not value.strip().isdigit():
        raise ServeError(400, f"Inference-Header-Content-Length must be a byte count, got {value!r}")
    return int(value)


class BodyParser:
    """Parses inference bodies; one child process (started at the first large body) does the large ones."""

    def __init__(self) -> None:
        self._process: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()
        self.offloaded = 0  # bodies parsed in the child process

    async def parse(self, chunks: list[bytes], header_length: int | None, image_size: int) -> tuple[dict, memoryview]:
        """``(header, data)``: the request's JSON without tensor data, and every input's bytes in input order
        (each input's ``parameters.binary_data_size`` says how many are its).

        Raises:
            ServeError: 400 malformed, 413 too large to parse (as :func:`~snowhub.serving.http._body.normalise`).
        """
        size = sum(map(len, chunks))
        json_part = size if header_length is None else header_length
        try:
            if json_part <= INLINE_JSON_BYTES:
                header, data = _body.normalise(b"".join(chunks), header_length, image_size)
            else:
                header, data = await self._offload(chunks, size, header_length, image_size)
        except _body.BodyError as error:
            raise ServeError(error.status, error.message) from None
        return json.loads(header), memoryview(data)

    async def _offload(self, chunks: list[bytes], size: int, header_length: int | None,
                       image_size: int) -> tuple[bytes, memoryview]:
        async with self._lock:
            if self._process is None or self._process.returncode is not None:
                self._process = await asyncio.create_subprocess_exec(
                    sys.executable, _body.__file__, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
            process = self._process
            try:
                process.stdin.write(_body._FRAME.pack(size, -1 if header_length is None else header_length,
                                                      image_size))
                for chunk in chunks:  # as they came: no copy of the whole body
                    process.stdin.write(chunk)
                    await process.stdin.drain()
                status, length = _body._REPLY.unpack(await process.stdout.readexactly(_body._REPLY.size))
                payload = await process.stdout.readexactly(length)
            except BaseException as error:  # a dead child, or a client gone mid-exchange: start afresh next time
                self._kill()
                if isinstance(error, (ConnectionError, asyncio.IncompleteReadError)):
                    raise ServeError(413, "the request body could not be parsed in the memory this server has") \
                        from None
                raise
            self.offloaded += 1
        if status != 200:
            raise _body.BodyError(status, payload.decode(errors="replace"))
        split = 8 + int.from_bytes(payload[:8], "little")
        return payload[8:split], memoryview(payload)[split:]

    def _kill(self) -> None:
        if self._process is not None and self._process.returncode is None:
            self._process.kill()
        self._process = None

    async def close(self) -> None:
        """Stop the child process, if one was started."""
        process, self._process = self._process, None
        if process is not None and process.returncode is None:
            process.stdin.close()
            try:
                await asyncio.wait_for(process.wait(), 5)
            except asyncio.TimeoutError:
                process.kill()

"""OIP v2 inference bodies in the binary tensor data form: every input's ``data`` moved out of the JSON.

A body is either all JSON, or (the binary tensor data extension, ``Inference-Header-Content-Length``) a JSON
header followed by the raw bytes of the inputs whose ``parameters.binary_data_size`` says so. :func:`normalise`
turns either into a small JSON header in which **every** input has ``binary_data_size``, followed by each
input's raw bytes in input order: ``UINT8`` values as bytes (checked integers 0..255), ``BYTES`` elements
(base64 strings in JSON, raw in binary) as 4-byte little-endian lengths and their bytes, as Triton lays them out.

Parsing a large JSON body holds Python's GIL for seconds (the C parser never lets go), so the server runs this
for large bodies in a child process (:mod:`snowhub.serving.http._parser`), and that process runs this file as a
script: it imports nothing from snowhub (no torch), only json, base64 and NumPy.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import struct
import sys

import numpy as np

MAX_HEADER_BYTES = 1 << 20  # the JSON left once the tensor data is out of it
_FRAME = struct.Struct("<qqi")  # body length, header length (-1: all JSON), the task's image size (px)
_REPLY = struct.Struct("<iq")  # status (200 = body follows), payload length


class BodyError(Exception):
    """A body the server refuses: an HTTP `status` (400, 413) and a one-line `message`."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def normalise(body: bytes | memoryview, header_length: int | None, image_size: int) -> tuple[bytes, bytes]:
    """A request body as ``(header JSON, binary)``: every input's data in ``binary`` (see the module docstring).

    Args:
        body: the whole request body.
        header_length: ``Inference-Header-Content-Length`` (the JSON's length), None when all of it is JSON.
        image_size: the task's image size S (px), named in the errors.

    Raises:
        BodyError: 400 for a body that is not a JSON object, nests too deep, holds data that does not fit its
            datatype, or binary sizes that do not add up; 413 for a JSON header over 1 MiB once data is out.
    """
    body = memoryview(body)
    if header_length is not None and not 0 <= header_length <= len(body):
        raise BodyError(400, f"Inference-Header-Content-Length is {header_length}, the body has {len(body)} bytes")
    text, binary = (body, body[len(body):]) if header_length is None else (body[:header_length], body[header_length:])
    doc = _load(text)
    inputs = doc.get("inputs")
    raws, offset = [], 0
    for i, spec in enumerate(inputs if isinstance(inputs, list) else []):
        if not isinstance(spec, dict):
            continue
        params = spec.get("parameters") if isinstance(spec.get("parameters"), dict) else {}
        if "data" in spec:
            raw = _convert(spec.pop("data"), spec.get("datatype"), i, image_size)
        elif "binary_data_size" in params:
            size = params["binary_data_size"]
            if isinstance(size, bool) or not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise BodyError(400, f"input {i}'s binary_data_size {size!r} does not fit the {len(binary)} bytes "
                                     "after the JSON header")
            raw, offset = bytes(binary[offset:offset + size]), offset + size
        else:
            raise BodyError(400, f"input {i} has neither data nor parameters.binary_data_size")
        spec["parameters"] = {**params, "binary_data_size": len(raw)}
        raws.append(raw)
    if offset != len(binary):
        raise BodyError(400, f"the body has {len(binary) - offset} bytes after its inputs' binary data")
    header = json.dumps(doc, separators=(",", ":")).encode()
    if len(header) > MAX_HEADER_BYTES:
        raise BodyError(413, f"the request's JSON is {len(header):,} bytes without its tensor data, over the limit "
                             f"of {MAX_HEADER_BYTES:,}")
    return header, b"".join(raws)


def _load(text: memoryview) -> dict:
    try:
        doc = json.loads(bytes(text))
    except RecursionError:
        raise BodyError(400, "the body is not JSON this server reads: nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as error:
        raise BodyError(400, f"the body is not JSON ({' '.join(str(error).split())[:200]})") from None
    if not isinstance(doc, dict):
        raise BodyError(400, f"the body must be a JSON object (an inference request), got a {type(doc).__name__}")
    return doc


def _convert(data: object, datatype: object, i: int, image_size: int) -> bytes:
    if datatype == "UINT8":
        return _uint8(data)
    if datatype == "BYTES":
        return _bytes(data, i)
    raise BodyError(400, f"input datatype {datatype!r} is not accepted: send images as UINT8 [B, 3, {image_size}, "
                         f"{image_size}] or image_files as BYTES (encoded image files)")


def _uint8(data: object) -> bytes:
    if not isinstance(data, list):
        raise BodyError(400, "a UINT8 input's data must be a flat (or regularly nested) list of integers")
    try:
        array = np.asarray(data)
    except (ValueError, OverflowError):  # ragged nesting, integers beyond 64 bits
        raise BodyError(400, "a UINT8 input's data must be a flat (or regularly nested) list of integers 0..255") from None
    if array.dtype.kind not in "iu":
        raise BodyError(400, f"a UINT8 input's data must be integers 0..255, got {array.dtype.name} values")
    if array.size and (array.min() < 0 or array.max() > 255):
        raise BodyError(400, "a UINT8 input's data must be integers 0..255")
    return array.astype(np.uint8).tobytes()


def _bytes(data: object, i: int) -> bytes:
    flat = list(_flat(data)) if isinstance(data, list) else None
    if flat is None or not all(isinstance(d, str) for d in flat):
        raise BodyError(400, "a BYTES input's data must be a list of base64-encoded image files")
    out = []
    for k, text in enumerate(flat):
        try:
            raw = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise BodyError(400, f"BYTES element {k} of input {i} is not valid base64") from None
        out += [struct.pack("<I", len(raw)), raw]
    return b"".join(out)


def _flat(data: list):
    for d in data:
        if isinstance(d, list):
            yield from _flat(d)
        else:
            yield d


def split_bytes(raw: bytes | memoryview) -> list[bytes]:
    """The elements of a ``BYTES`` tensor's raw data (4-byte little-endian length, then the bytes, each).

    Raises:
        BodyError: 400 when the lengths run past the data.
    """
    raw, out, at = memoryview(raw), [], 0
    while at < len(raw):
        if at + 4 > len(raw):
            raise BodyError(400, "a BYTES input's binary data ends inside an element's 4-byte length")
        (n,) = struct.unpack_from("<I", raw, at)
        if at + 4 + n > len(raw):
            raise BodyError(400, "a BYTES input's binary data is shorter than its elements' lengths say")
        out.append(bytes(raw[at + 4:at + 4 + n]))
        at += 4 + n
    return out


# -- the child process: frames in on stdin, replies out on stdout ------------------------------------------------


def _read(stream, n: int) -> bytes | None:
    chunks, left = [], n
    while left:
        chunk = stream.read(left)
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _serve(stdin, stdout) -> None:
    while (frame := _read(stdin, _FRAME.size)) is not None:
        length, header_length, image_size = _FRAME.unpack(frame)
        body = _read(stdin, length)
        if body is None:
            return
        try:
            header, binary = normalise(body, None if header_length < 0 else header_length, image_size)
            payload, status = struct.pack("<q", len(header)) + header + binary, 200
        except BodyError as error:
            payload, status = error.message.encode(), error.status
        except MemoryError:
            payload, status = b"the body is too large to parse in the memory this server has", 413
        del body
        stdout.write(_REPLY.pack(status, len(payload)))
        stdout.write(payload)
        stdout.flush()


if __name__ == "__main__":
    os.nice(10)  # parsing yields the CPU to the server's event loop and forward passes
    _serve(sys.stdin.buffer, sys.stdout.buffer)

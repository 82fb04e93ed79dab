"""Read the named metadata entries of a .tflite flatbuffer (no TensorFlow, no flatbuffers
package): ``Model.metadata`` (schema.fbs field 6) is a vector of tables {name: string,
buffer: uint}, and ``Model.buffers`` (field 4) a vector of tables {data: [ubyte]}.

Every offset is bounds-checked; a malformed file raises ``ValueError`` with the reason.
"""

from __future__ import annotations

import json
import struct


class _Buf:
    def __init__(self, data: bytes):
        self.d = data

    def u32(self, pos: int, what: str) -> int:
        if not 0 <= pos <= len(self.d) - 4:
            raise ValueError(f"{what}: offset {pos} outside the file")
        return struct.unpack_from("<I", self.d, pos)[0]

    def i32(self, pos: int, what: str) -> int:
        self.u32(pos, what)  # bounds
        return struct.unpack_from("<i", self.d, pos)[0]

    def u16(self, pos: int, what: str) -> int:
        if not 0 <= pos <= len(self.d) - 2:
            raise ValueError(f"{what}: offset {pos} outside the file")
        return struct.unpack_from("<H", self.d, pos)[0]

    def field(self, table: int, i: int, what: str) -> int | None:
        """Absolute position of field i of the table at ``table``, or None if absent."""
        vt = table - self.i32(table, what)
        vsize = self.u16(vt, what)
        if 4 + 2 * i + 2 > vsize:
            return None
        off = self.u16(vt + 4 + 2 * i, what)
        return table + off if off else None

    def deref(self, pos: int, what: str) -> int:
        return pos + self.u32(pos, what)

    def vector(self, pos: int, what: str) -> tuple[int, int]:
        """(start, length) of the vector the offset at ``pos`` points to."""
        v = self.deref(pos, what)
        n = self.u32(v, what)
        if n > len(self.d):
            raise ValueError(f"{what}: vector length {n} is larger than the file")
        return v + 4, n

    def tables(self, table: int, i: int, what: str) -> list[int]:
        p = self.field(table, i, what)
        if p is None:
            return []
        start, n = self.vector(p, what)
        return [self.deref(start + 4 * k, f"{what} {k}") for k in range(n)]

    def bytes_at(self, start: int, n: int, what: str) -> bytes:
        if start < 0 or start + n > len(self.d):
            raise ValueError(f"{what}: {n} bytes at {start} run past the end of the file")
        return self.d[start:start + n]


def read_metadata(data: bytes) -> dict[str, bytes]:
    """{name: bytes} of the model's metadata entries."""
    b = _Buf(bytes(data))
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise ValueError("not a TFLite model (no TFL3 identifier)")
    root = b.deref(0, "root")
    buffers = b.tables(root, 4, "buffers")
    out = {}
    for k, t in enumerate(b.tables(root, 6, "metadata")):
        what = f"metadata {k}"
        np_ = b.field(t, 0, what)
        if np_ is None:
            continue
        start, n = b.vector(np_, what)
        name = b.bytes_at(start, n, what).decode("utf-8", "replace")
        bp = b.field(t, 1, what)
        bi = b.u32(bp, what) if bp is not None else 0
        if bi >= len(buffers):
            raise ValueError(f"{what}: buffer {bi} does not exist")
        dp = b.field(buffers[bi], 0, f"buffer {bi}")
        if dp is None:
            out[name] = b""
            continue
        start, n = b.vector(dp, f"buffer {bi}")
        out[name] = b.bytes_at(start, n, f"buffer {bi}")
    return out


def aiot_model(data: bytes) -> dict:
    """The ``aiot.model`` metadata (what a node needs to run the model) as a dict."""
    meta = read_metadata(data).get("aiot.model")
    if meta is None:
        raise ValueError("no 'aiot.model' metadata (not made by aiot model train)")
    try:
        m = json.loads(meta)
    except ValueError as e:
        raise ValueError(f"'aiot.model' metadata is not JSON: {e}") from None
    if not isinstance(m, dict):
        raise ValueError("'aiot.model' metadata is not a JSON object")  # noqa: TRY004 (bad input)
    return m

"""Write standard ``.tflite`` flatbuffers without TensorFlow.

A small, dependency-free writer (numpy optional, for ``data=``) of the TFLite schema
subset that int8 models use: buffers, tensors with per-tensor or per-channel
quantization, builtin operators with their options, metadata entries. Tests build
single-op models with it; the training pipeline exports its int8 models with it.

    from aiotkit.models.tflbuild import ModelBuilder

    mb = ModelBuilder(description="bearing classifier v1")
    x = mb.add_tensor([1, 16], "int8", scale=0.05, zero_point=-3, name="features")
    w = mb.add_tensor([4, 16], "int8", scale=[0.01, 0.02, 0.01, 0.03], zero_point=0,
                      quantized_dimension=0, data=weights_int8)
    b = mb.add_tensor([4], "int32", scale=[...], zero_point=0, data=bias_int32)
    y = mb.add_tensor([1, 4], "int8", scale=0.1, zero_point=5)
    mb.add_op("FULLY_CONNECTED", [x, w, b], [y], fused_activation_function="RELU")
    mb.add_metadata("aiot.card", b'{"version": 1}')
    tflite_bytes = mb.build(inputs=[x], outputs=[y])

Options are the schema's field names (``padding="SAME"``, ``stride_w=2``,
``dilation_h_factor=2``, ``depth_multiplier=1``, ``filter_width=3``, ``axis=-1``,
``keep_dims=True``, ``beta=1.0``, ``new_shape=[1, 8]``, ...); see ``OPTIONS``. Values are
written as given, without checking, so tests can also build invalid models. The file
follows the flatbuffers binary format (little-endian, file identifier ``TFL3``,
constant buffers aligned to 16 bytes) and loads in TFLite, TFLite Micro and the node.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

__all__ = ["ACTIVATIONS", "BUILTIN_OPS", "OPTIONS", "TENSOR_TYPES", "ModelBuilder"]

SCHEMA_VERSION = 3
FILE_IDENTIFIER = b"TFL3"

# schema.fbs enum TensorType: name -> (code, struct format of one element)
TENSOR_TYPES: dict[str, tuple[int, str]] = {
    "float32": (0, "f"), "float16": (1, "e"), "int32": (2, "i"), "uint8": (3, "B"),
    "int64": (4, "q"), "bool": (6, "?"), "int16": (7, "h"), "int8": (9, "b"),
    "float64": (10, "d"), "uint32": (15, "I"), "uint16": (16, "H"),
}

# schema.fbs enum BuiltinOperator (the ones a model author is likely to name; any other
# builtin can be given by its number)
BUILTIN_OPS: dict[str, int] = {
    "ADD": 0, "AVERAGE_POOL_2D": 1, "CONCATENATION": 2, "CONV_2D": 3,
    "DEPTHWISE_CONV_2D": 4, "DEQUANTIZE": 6, "FLOOR": 8, "FULLY_CONNECTED": 9,
    "L2_NORMALIZATION": 11, "LOGISTIC": 14, "MAX_POOL_2D": 17, "MUL": 18, "RELU": 19,
    "RELU_N1_TO_1": 20, "RELU6": 21, "RESHAPE": 22, "SOFTMAX": 25, "TANH": 28,
    "CUSTOM": 32, "PAD": 34, "TRANSPOSE": 39, "MEAN": 40, "SUB": 41, "DIV": 42,
    "SQUEEZE": 43, "STRIDED_SLICE": 45, "EXP": 47, "LOG_SOFTMAX": 50, "MAXIMUM": 55,
    "ARG_MAX": 56, "MINIMUM": 57, "SQUARE": 92, "LEAKY_RELU": 98, "QUANTIZE": 114,
    "HARD_SWISH": 117, "BATCH_MATMUL": 126,
}

# schema.fbs enum ActivationFunctionType / Padding
ACTIVATIONS = {"NONE": 0, "RELU": 1, "RELU_N1_TO_1": 2, "RELU6": 3, "TANH": 4,
               "SIGN_BIT": 5}
PADDINGS = {"SAME": 0, "VALID": 1}

# option table per builtin: (BuiltinOptions union type, [(field, kind, default)]) in
# schema slot order. kind: a struct format, "act", "pad" (enums, by name or number),
# or "[i" (vector of int32).
_POOL = (5, [("padding", "pad", "VALID"), ("stride_w", "i", 1), ("stride_h", "i", 1),
             ("filter_width", "i", 1), ("filter_height", "i", 1),
             ("fused_activation_function", "act", "NONE")])
OPTIONS: dict[str, tuple[int, list[tuple[str, str, Any]]]] = {
    "CONV_2D": (1, [("padding", "pad", "VALID"), ("stride_w", "i", 1), ("stride_h", "i", 1),
                    ("fused_activation_function", "act", "NONE"),
                    ("dilation_w_factor", "i", 1), ("dilation_h_factor", "i", 1)]),
    "DEPTHWISE_CONV_2D": (2, [("padding", "pad", "VALID"), ("stride_w", "i", 1),
                              ("stride_h", "i", 1), ("depth_multiplier", "i", 1),
                              ("fused_activation_function", "act", "NONE"),
                              ("dilation_w_factor", "i", 1), ("dilation_h_factor", "i", 1)]),
    "AVERAGE_POOL_2D": _POOL,
    "MAX_POOL_2D": _POOL,
    "FULLY_CONNECTED": (8, [("fused_activation_function", "act", "NONE"),
                            ("weights_format", "b", 0), ("keep_num_dims", "?", False),
                            ("asymmetric_quantize_inputs", "?", False)]),
    "SOFTMAX": (9, [("beta", "f", 1.0)]),
    "CONCATENATION": (10, [("axis", "i", 0), ("fused_activation_function", "act", "NONE")]),
    "ADD": (11, [("fused_activation_function", "act", "NONE"), ("pot_scale_int16", "?", True)]),
    "RESHAPE": (17, [("new_shape", "[i", None)]),
    "MUL": (21, [("fused_activation_function", "act", "NONE")]),
    "MEAN": (27, [("keep_dims", "?", False)]),
    "SUB": (28, [("fused_activation_function", "act", "NONE"), ("pot_scale_int16", "?", True)]),
    "SQUEEZE": (30, [("squeeze_dims", "[i", None)]),
    "DEQUANTIZE": (38, []),
    "QUANTIZE": (89, []),
}


class ModelBuilder:
    """Collects tensors, operators and metadata of one subgraph; ``build()`` -> bytes."""

    def __init__(self, description: str = "aiotkit tflbuild") -> None:
        self.description = description
        self._buffers: list[bytes] = [b""]  # buffer 0: the empty sentinel (convention)
        self._tensors: list[dict[str, Any]] = []
        self._opcodes: list[tuple[int, str | None, int]] = []
        self._ops: list[dict[str, Any]] = []
        self._metadata: list[tuple[str, int]] = []

    # -- tensors -------------------------------------------------------------------

    def add_tensor(
        self,
        shape: Sequence[int],
        dtype: str = "int8",
        scale: float | Sequence[float] | None = None,
        zero_point: int | Sequence[int] | None = None,
        quantized_dimension: int = 0,
        data: Any = None,
        name: str | None = None,
    ) -> int:
        """Add a tensor; returns its index.

        ``scale``/``zero_point``: a number (per-tensor) or a sequence (per-channel along
        ``quantized_dimension``); a single zero point is repeated to the scales' count.
        ``data``: constant contents (numpy array, sequence of numbers, or raw bytes in
        little-endian order); tensors without data are activations in the arena.
        """
        code, fmt = _tensor_type(dtype)
        shape = [int(d) for d in shape]
        buf = 0
        if data is not None:
            buf = len(self._buffers)
            self._buffers.append(_pack_data(data, fmt))
        quant = None
        if scale is not None or zero_point is not None:
            scales = [] if scale is None else _as_list(scale, float)
            zps = [] if zero_point is None else _as_list(zero_point, int)
            if len(zps) == 1 and len(scales) > 1:
                zps = zps * len(scales)
            quant = (scales, zps, int(quantized_dimension))
        self._tensors.append({
            "shape": shape, "type": code, "buffer": buf,
            "name": name if name is not None else f"t{len(self._tensors)}",
            "quant": quant,
        })
        return len(self._tensors) - 1

    # -- operators -----------------------------------------------------------------

    def add_op(
        self,
        opcode: str | int,
        inputs: Sequence[int],
        outputs: Sequence[int],
        *,
        version: int = 1,
        custom_code: str | None = None,
        raw_options: tuple[int, bytes] | None = None,
        **options: Any,
    ) -> int:
        """Add an operator (a ``BUILTIN_OPS`` name or a builtin number); returns its index.

        ``options`` are the op's option fields by schema name (see ``OPTIONS``); fields
        left out get the schema default. An input of -1 is an absent optional input.
        ``raw_options=(union_type, fields)`` instead writes an arbitrary options table,
        ``fields`` a list of (format, value) per slot (for tests of malformed models).
        """
        if isinstance(opcode, str):
            if opcode not in BUILTIN_OPS:
                raise ValueError(f"unknown builtin op {opcode!r} (give its number)")
            name: str | None = opcode
            code = BUILTIN_OPS[opcode]
        else:
            code = int(opcode)
            name = next((k for k, v in BUILTIN_OPS.items() if v == code), None)
        key = (code, custom_code, version)
        if key not in self._opcodes:
            self._opcodes.append(key)
        opt: tuple[int, Any] | None = None
        if raw_options is not None:
            opt = raw_options
        elif name in OPTIONS:
            utype, fields = OPTIONS[name]
            unknown = set(options) - {f for f, _, _ in fields}
            if unknown:
                raise ValueError(f"{name} has no option(s) {sorted(unknown)}")
            opt = (utype, [(kind, options.get(f, dflt)) for f, kind, dflt in fields])
        elif options:
            raise ValueError(f"no options known for op {opcode!r}")
        self._ops.append({
            "opcode": self._opcodes.index(key),
            "inputs": [int(i) for i in inputs],
            "outputs": [int(i) for i in outputs],
            "options": opt,
        })
        return len(self._ops) - 1

    # -- metadata ------------------------------------------------------------------

    def add_metadata(self, name: str, data: bytes) -> None:
        """Store a named metadata entry (bytes in its own buffer), as TFLite does."""
        self._metadata.append((name, len(self._buffers)))
        self._buffers.append(bytes(data))

    # -- output --------------------------------------------------------------------

    def build(self, inputs: Sequence[int], outputs: Sequence[int]) -> bytes:
        """Serialise the model with the given subgraph inputs and outputs."""
        tensors = []
        for t in self._tensors:
            fields: list[Any] = [
                _Vec("i", t["shape"]), ("b", t["type"]), ("I", t["buffer"]), _Str(t["name"])
            ]
            if t["quant"] is not None:
                scales, zps, qdim = t["quant"]
                fields.append(_Table([
                    None, None,
                    _Vec("f", scales) if scales else None,
                    _Vec("q", zps) if zps else None,
                    None, None, ("i", qdim),
                ]))
            tensors.append(_Table(fields))
        ops = []
        for op in self._ops:
            fields = [("I", op["opcode"]), _Vec("i", op["inputs"]), _Vec("i", op["outputs"])]
            if op["options"] is not None:
                utype, vals = op["options"]
                fields.append(("B", utype))
                fields.append(_Table([_option_field(k, v) for k, v in vals]))
            ops.append(_Table(fields))
        subgraph = _Table([
            _Vec(_Table, tensors), _Vec("i", list(inputs)), _Vec("i", list(outputs)),
            _Vec(_Table, ops), _Str("main"),
        ])
        opcodes = [
            _Table([("b", min(code, 127)), _Str(cc) if cc is not None else None,
                    ("i", ver), ("i", code)])
            for code, cc, ver in self._opcodes
        ]
        buffers = [_Table([_Vec("B", data, align=16)] if data else []) for data in self._buffers]
        metadata = [_Table([_Str(n), ("I", b)]) for n, b in self._metadata]
        model = _Table([
            ("I", SCHEMA_VERSION), _Vec(_Table, opcodes), _Vec(_Table, [subgraph]),
            _Str(self.description), _Vec(_Table, buffers), None,
            _Vec(_Table, metadata) if metadata else None,
        ])
        return _Writer().finish(model)


# --- helpers ------------------------------------------------------------------------


def _tensor_type(dtype: Any) -> tuple[int, str]:
    key = getattr(dtype, "name", None) or str(dtype)
    if key.startswith("<class 'numpy."):
        key = key[len("<class 'numpy."):-2]
    if key not in TENSOR_TYPES:
        raise ValueError(f"unsupported tensor type {dtype!r}")
    return TENSOR_TYPES[key]


def _as_list(v: Any, conv: Any) -> list[Any]:
    if hasattr(v, "tolist"):
        v = v.tolist()
    if isinstance(v, (list, tuple)):
        return [conv(x) for x in v]
    return [conv(v)]


def _pack_data(data: Any, fmt: str) -> bytes:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    if hasattr(data, "ravel"):  # numpy
        flat = data.ravel().tolist()
    else:
        flat = list(data)
    return struct.pack(f"<{len(flat)}{fmt}", *flat)


def _option_field(kind: str, value: Any) -> Any:
    if kind == "act":
        return ("b", ACTIVATIONS[value] if isinstance(value, str) else int(value))
    if kind == "pad":
        return ("b", PADDINGS[value] if isinstance(value, str) else int(value))
    if kind == "[i":
        return None if value is None else _Vec("i", [int(x) for x in value])
    return (kind, value)


# --- a minimal flatbuffers serialiser -------------------------------------------------
# Layout: root uoffset, file identifier, then objects depth-first; a table is written
# as [vtable][table inline fields] and its children (strings, vectors, sub-tables)
# after it, so every uoffset points forward as the format requires. Scalars in a table
# are given as (struct format, value); None leaves a slot absent.


class _Table:
    def __init__(self, fields: list[Any]) -> None:
        self.fields = fields


class _Vec:
    def __init__(self, kind: Any, items: Any, align: int = 4) -> None:
        self.kind = kind  # a struct format, or _Table / _Str for vectors of offsets
        self.items = items
        self.align = align


class _Str:
    def __init__(self, s: str) -> None:
        self.data = s.encode()


class _Writer:
    def __init__(self) -> None:
        self.buf = bytearray()

    def _pad(self, align: int, extra: int = 0) -> None:
        while (len(self.buf) + extra) % align:
            self.buf.append(0)

    def finish(self, root: _Table) -> bytes:
        self.buf += b"\0\0\0\0" + FILE_IDENTIFIER
        pos = self._table(root)
        struct.pack_into("<I", self.buf, 0, pos)
        self._pad(16)
        return bytes(self.buf)

    def _child(self, obj: Any) -> int:
        if isinstance(obj, _Table):
            return self._table(obj)
        if isinstance(obj, _Str):
            self._pad(4)
            pos = len(self.buf)
            self.buf += struct.pack("<I", len(obj.data)) + obj.data + b"\0"
            return pos
        return self._vector(obj)

    def _vector(self, v: _Vec) -> int:
        if v.kind in (_Table, _Str):
            self._pad(4)
            pos = len(self.buf)
            n = len(v.items)
            self.buf += struct.pack("<I", n) + bytes(4 * n)
            for i, item in enumerate(v.items):
                slot = pos + 4 + 4 * i
                child = self._child(item)
                struct.pack_into("<I", self.buf, slot, child - slot)
            return pos
        size = struct.calcsize("<" + v.kind)
        if isinstance(v.items, (bytes, bytearray)):
            data = bytes(v.items)
            n = len(data) // size
        else:
            n = len(v.items)
            data = struct.pack(f"<{n}{v.kind}", *v.items)
        self._pad(max(v.align, size, 4), 4)
        pos = len(self.buf)
        self.buf += struct.pack("<I", n) + data
        return pos

    def _table(self, t: _Table) -> int:
        # inline layout: soffset to vtable, then fields (scalars aligned to their size,
        # offsets as uint32)
        layout: list[tuple[int, int, Any]] = []  # (slot, inline offset, field)
        off = 4
        for slot, f in enumerate(t.fields):
            if f is None:
                continue
            size = struct.calcsize("<" + f[0]) if isinstance(f, tuple) else 4
            off = (off + size - 1) // size * size
            layout.append((slot, off, f))
            off += size
        nslots = len(t.fields)
        while nslots and t.fields[nslots - 1] is None:
            nslots -= 1
        inline_size = (off + 3) // 4 * 4
        vt = [0] * nslots
        for slot, o, _ in layout:
            vt[slot] = o
        vtable = struct.pack(f"<HH{nslots}H", 4 + 2 * nslots, inline_size, *vt)
        big = any(isinstance(f, tuple) and struct.calcsize("<" + f[0]) == 8 for _, _, f in layout)
        self._pad(2)
        self._pad(8 if big else 4, len(vtable))
        vpos = len(self.buf)
        self.buf += vtable
        pos = len(self.buf)
        self.buf += bytes(inline_size)
        struct.pack_into("<i", self.buf, pos, pos - vpos)
        for _, o, f in layout:
            if isinstance(f, tuple):
                struct.pack_into("<" + f[0], self.buf, pos + o, f[1])
        for _, o, f in layout:
            if not isinstance(f, tuple):
                child = self._child(f)
                struct.pack_into("<I", self.buf, pos + o, child - (pos + o))
        return pos

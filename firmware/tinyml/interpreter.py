# int8 TFLite interpreter for the node, bit-exact with TFLite Micro (see TFLITE.md).
#
#   ip = Interpreter("model.tflite")     # or bytes; checks everything, plans the arena
#   ip.input(0)[:] = features_int8       # memoryview of the input tensor's bytes
#   ip.invoke()                          # allocates nothing (int8 models)
#   ip.output(0)                         # memoryview of the output tensor's bytes
#
# Loading parses the flatbuffer (flatbuf.py), validates every tensor and operator
# against what the kernels support (errors name the op and the field), derives the
# requantization constants exactly from the float32 bits (quant.py), plans tensor
# lifetimes into one bytearray arena (greedy by size, like TFLM), and binds each op to
# a viper kernel (kernels.py). From a file, FULLY_CONNECTED and CONV_2D weights can stay
# in the file and stream through one chunk buffer.
import struct
from array import array
from micropython import const

from tinyml import kernels, quant
from tinyml.flatbuf import Source, Table, TFLiteError, label

_ALIGN = const(16)  # arena offsets, as TFLM's MicroArenaBufferAlignment()
_F32 = const(0)
_I32 = const(2)
_I8 = const(9)
_TYPE_NAMES = {0: "FLOAT32", 1: "FLOAT16", 2: "INT32", 3: "UINT8", 4: "INT64", 5: "STRING",
               6: "BOOL", 7: "INT16", 8: "COMPLEX64", 9: "INT8", 10: "FLOAT64"}
_TYPE_SIZE = {0: 4, 2: 4, 3: 1, 4: 8, 7: 2, 9: 1}
_ACT_NAMES = ("NONE", "RELU", "RELU_N1_TO_1", "RELU6", "TANH", "SIGN_BIT")
# Elements per tensor (and dimensions <= 65535, checked before the product): protects
# memory and word size. A tensor of 2^22 elements is already 4-16 MB, more than any
# board's heap (arena) or RAM copy, and every offset a viper kernel computes from it stays
# far inside the signed 32-bit machine word of a board.
_MAX_ELEMS = const(1 << 22)
# Metadata names the node looks up ("aiot.model") are short; a longer name is skipped
# (not refused: names are metadata), so no entry's name is ever copied whole into RAM.
_KEY_MAX = const(64)

# builtin codes (schema.fbs BuiltinOperator)
_ADD = const(0)
_AVERAGE_POOL_2D = const(1)
_CONCATENATION = const(2)
_CONV_2D = const(3)
_DEPTHWISE_CONV_2D = const(4)
_DEQUANTIZE = const(6)
_FULLY_CONNECTED = const(9)
_LOGISTIC = const(14)
_MAX_POOL_2D = const(17)
_MUL = const(18)
_RELU = const(19)
_RELU6 = const(21)
_RESHAPE = const(22)
_SOFTMAX = const(25)
_TANH = const(28)
_MEAN = const(40)
_QUANTIZE = const(114)


def _tname(t):
    return _TYPE_NAMES.get(t, "type %d" % t)


class Tensor:
    """A tensor's static description; `off` is its arena offset (-1: constant)."""

    def __init__(self, idx, shape, ttype, name):
        self.idx = idx
        self.shape = shape
        self.type = ttype
        self.name = name
        n = 1
        for d in shape:
            n *= d
        self.count = n
        self.nbytes = n * _TYPE_SIZE.get(ttype, 0)
        self.scales = ()  # float32 bits
        self.zps = ()
        self.qdim = 0
        self.data = None  # (position in the model, length) of a constant
        self.off = -1

    @property
    def zp(self):
        return self.zps[0] if self.zps else 0

    @property
    def scale(self):
        return quant.f32_value(self.scales[0]) if self.scales else 0.0


class Model:
    """The parsed and checked flatbuffer: tensors, operators, metadata."""

    def __init__(self, src):
        self.src = src
        if src.size < 16:
            raise TFLiteError("not a TFLite model: %d bytes" % src.size)
        if src.read(4, 4, "file identifier") != b"TFL3":
            raise TFLiteError("not a TFLite model: file identifier is not TFL3")
        m = Table(src, src.u32(0, "root offset"), "model")
        ver = m.scalar(0, "<I", 0)
        if ver != 3:
            raise TFLiteError("model: schema version %d, expected 3" % ver)
        self.opcodes = []
        for t in m.tables(1, "operator_codes"):
            code = max(t.scalar(0, "<b", 0), t.scalar(3, "<i", 0))
            if t.field(1, 4):
                code = -1  # custom op
            self.opcodes.append(code)
        subgraphs = m.tables(2, "subgraphs")
        if len(subgraphs) != 1:
            raise TFLiteError("model: %d subgraphs, only 1 is supported" % len(subgraphs))
        self.buffers = []
        for i, b in enumerate(m.tables(4, "buffers")):
            w = "buffer %d" % i
            if b.scalar(1, "<Q", 0) > 1 or b.scalar(2, "<Q", 0):
                raise TFLiteError("%s: data outside the flatbuffer is not supported" % w)
            v = b.vector(0, 1, w)
            self.buffers.append(v if v and v[1] else None)
        self.metadata = {}
        for i, t in enumerate(m.tables(6, "metadata")):
            w = "metadata %d" % i
            name = t.string(0, w, _KEY_MAX + 1)
            bi = t.scalar(1, "<I", 0)
            if bi >= len(self.buffers):
                raise TFLiteError("%s: buffer %d does not exist" % (w, bi))
            if name is None or name[1] > _KEY_MAX:
                continue
            try:
                self.metadata[name[0].decode()] = self.buffers[bi]
            except UnicodeError:
                pass  # not a name the node looks up
        g = subgraphs[0]
        self.tensors = [self._tensor(i, t) for i, t in enumerate(g.tables(0, "tensors"))]
        nt = len(self.tensors)
        self.inputs = self._indices(g.ints(1, "subgraph inputs") or [], nt, "subgraph inputs")
        self.outputs = self._indices(g.ints(2, "subgraph outputs") or [], nt,
                                     "subgraph outputs")
        self.ops = []
        for i, t in enumerate(g.tables(3, "operators")):
            w = "op %d" % i
            oc = t.scalar(0, "<I", 0)
            if oc >= len(self.opcodes):
                raise TFLiteError("%s: opcode index %d does not exist" % (w, oc))
            ins = t.ints(1, w + " inputs") or []
            outs = t.ints(2, w + " outputs") or []
            for k in ins + outs:
                if k < -1 or k >= nt:
                    raise TFLiteError("%s: tensor index %d does not exist" % (w, k))
            self.ops.append((self.opcodes[oc], ins, outs, t.scalar(3, "<B", 0), t.table(4, w)))
        if not self.ops:
            raise TFLiteError("model: no operators")

    def _indices(self, lst, nt, what):
        for k in lst:
            if k < 0 or k >= nt:
                raise TFLiteError("%s: tensor index %d does not exist" % (what, k))
        return lst

    def _tensor(self, i, t):
        w = "tensor %d" % i
        shape = t.ints(0, w + " shape") or []
        if len(shape) > 6:
            raise TFLiteError("%s: %d dimensions, at most 6 are supported" % (w, len(shape)))
        n = 1
        for d in shape:
            if d < 1 or d > 65535:
                raise TFLiteError("%s: dimension %d is not supported" % (w, d))
            n *= d
        if n > _MAX_ELEMS:
            raise TFLiteError("%s: %d elements is too many" % (w, n))
        ttype = t.scalar(1, "<b", 0)
        name = label(t.string(3, w))  # a bounded prefix: the schema bounds no name
        if name:
            w = "tensor %d (%s)" % (i, name)
        ts = Tensor(i, tuple(shape), ttype, name)
        bi = t.scalar(2, "<I", 0)
        if bi >= len(self.buffers) and bi:
            raise TFLiteError("%s: buffer %d does not exist" % (w, bi))
        if bi and self.buffers[bi]:
            pos, ln = self.buffers[bi]
            if ttype not in _TYPE_SIZE or ln != ts.nbytes:
                raise TFLiteError("%s: constant data of %d bytes, %s%s needs %d"
                                  % (w, ln, _tname(ttype), list(shape), ts.nbytes))
            ts.data = (pos, ln)
        if t.scalar(5, "<B", 0):
            raise TFLiteError("%s: variable tensors are not supported" % w)
        if t.field(6, 4):
            raise TFLiteError("%s: sparse tensors are not supported" % w)
        q = t.table(4, w + " quantization")
        if q is not None:
            if q.field(5, 4):
                raise TFLiteError("%s: custom quantization details are not supported" % w)
            sc = q.ints(2, w + " scale", "<I") or []
            zp = q.ints(3, w + " zero_point", "<q") or []
            if sc and len(zp) != len(sc):
                raise TFLiteError("%s: %d scales but %d zero points" % (w, len(sc), len(zp)))
            qd = q.scalar(6, "<i", 0)
            for b in sc:
                if (b >> 23) & 0xFF in (0, 0xFF) or b >> 31:
                    raise TFLiteError("%s: scale %r is not a positive normal float"
                                      % (w, quant.f32_value(b) if (b >> 23) & 0xFF != 0xFF
                                         else "inf/nan"))
            if len(sc) > 1 and (qd < 0 or qd >= len(shape) or shape[qd] != len(sc)):
                raise TFLiteError("%s: %d scales do not match dimension %d of %s"
                                  % (w, len(sc), qd, list(shape)))
            for z in zp:
                if z < -128 or z > 127:
                    if ttype == _I8:
                        raise TFLiteError("%s: zero point %d outside int8" % (w, z))
                    if z < -(1 << 31) or z >= (1 << 31):
                        raise TFLiteError("%s: zero point %d is out of range" % (w, z))
            ts.scales = tuple(sc)
            ts.zps = tuple(zp)
            ts.qdim = qd
        return ts


def _pad_out(padding, size, k, stride, dil):
    """TFLM ComputeOutSize and ComputePadding for one spatial dimension."""
    eff = (k - 1) * dil + 1
    if padding == 0:  # SAME
        out = (size + stride - 1) // stride
    else:
        out = (size + stride - eff) // stride
    pad = ((out - 1) * stride + eff - size) // 2
    return out, (pad if pad > 0 else 0)


def _pc(consts, mults, shifts):
    """Per-channel parameter table of the kernels (see kernels.py)."""
    pc = array("i", bytes(16 * len(consts)))
    for j in range(len(consts)):
        c = consts[j]
        if c < -(1 << 31) or c >= (1 << 31):
            raise TFLiteError("accumulator constant %d overflows int32" % c)
        pc[4 * j] = c & 0xFFFF
        pc[4 * j + 1] = (c >> 16) & 0xFFFF
        pc[4 * j + 2] = mults[j]
        pc[4 * j + 3] = shifts[j] + 32
    return pc


class _Op:
    """One prepared operator; run(arena) executes it."""

    def __init__(self, ip, i, code, ins, outs, otype, opts):
        self.ip = ip
        self.code = code
        self.what = "op %d (%s)" % (i, _NAMES[code])
        self.ins = ins
        self.outs = outs
        self.otype = otype
        self.opts = opts
        self.scratch = 0  # arena bytes needed while the op runs
        self.sc_off = -1

    def err(self, msg):
        return TFLiteError("%s: %s" % (self.what, msg))

    def t(self, k, optional=False):
        lst = self.ins
        if k >= len(lst) or lst[k] < 0:
            if optional:
                return None
            raise self.err("input %d is missing" % k)
        return self.ip.tensors[lst[k]]

    def out(self, k=0):
        if k >= len(self.outs) or self.outs[k] < 0:
            raise self.err("output %d is missing" % k)
        return self.ip.tensors[self.outs[k]]

    def counts(self, nin_min, nin_max, nout=1):
        if not nin_min <= len(self.ins) <= nin_max:
            raise self.err("%d inputs, expected %s" % (len(self.ins), nin_min if nin_min == nin_max
                                                        else "%d..%d" % (nin_min, nin_max)))
        if len(self.outs) != nout:
            raise self.err("%d outputs, expected %d" % (len(self.outs), nout))

    def opt(self, utype, slot, fmt, default):
        o = self.opts
        if o is None:
            return default
        if self.otype != utype:
            raise self.err("options of type %d, expected %d" % (self.otype, utype))
        return o.scalar(slot, fmt, default)

    def act(self, slot, utype):
        a = self.opt(utype, slot, "<b", 0)
        if a not in (0, 1, 2, 3):
            raise self.err("fused activation %s is not supported"
                           % (_ACT_NAMES[a] if 0 <= a < len(_ACT_NAMES) else a))
        return a

    def int8(self, t, what, per_tensor=True):
        if t.type != _I8:
            raise self.err("%s %d is %s, expected INT8" % (what, t.idx, _tname(t.type)))
        if per_tensor and (len(t.scales) != 1 or len(t.zps) != 1):
            raise self.err("%s %d needs per-tensor quantization (scale and zero point)"
                           % (what, t.idx))
        if t.data is not None and per_tensor and what != "filter":
            raise self.err("%s %d is constant, only activations are supported here"
                           % (what, t.idx))

    def activation_input(self, t, what="input"):
        self.int8(t, what)
        if t.data is not None:
            raise self.err("%s %d is constant" % (what, t.idx))

    def loc(self, t):
        """(buffer, offset) of a tensor's bytes for a kernel."""
        if t.off >= 0:
            return self.ip.arena, t.off
        return self.ip.const(t)

    def prepare(self):
        raise NotImplementedError

    def bind(self):
        """Resolve buffer locations once the arena exists (run() must not build tuples)."""

    def run(self, arena):
        raise NotImplementedError


# --- ops ---------------------------------------------------------------------------


class _Conv(_Op):
    """CONV_2D, DEPTHWISE_CONV_2D and FULLY_CONNECTED share the per-channel setup."""

    def channel_params(self, x, w, b, y, nch, axis, perch_double):
        if len(w.scales) not in (1, nch) or len(w.zps) != len(w.scales):
            raise self.err("filter %d: %d scales for %d output channels"
                           % (w.idx, len(w.scales), nch))
        if len(w.scales) > 1 and w.qdim != axis:
            raise self.err("filter %d: quantized_dimension %d, expected %d"
                           % (w.idx, w.qdim, axis))
        for z in w.zps:
            if z != 0:
                raise self.err("filter %d: zero point %d, weights must be symmetric"
                               % (w.idx, z))
        bias = [0] * nch
        if b is not None:
            if b.type != _I32:
                raise self.err("bias %d is %s, expected INT32" % (b.idx, _tname(b.type)))
            if b.count != nch or b.data is None:
                raise self.err("bias %d: needs %d constant values" % (b.idx, nch))
            raw = self.ip.src.read(b.data[0], b.data[1], self.what)
            bias = list(struct.unpack("<%di" % nch, raw))
        mults = []
        shifts = []
        for c in range(nch):
            sw = w.scales[c if len(w.scales) > 1 else 0]
            if len(w.scales) == 1 and not perch_double:
                # per-tensor FULLY_CONNECTED: TFLM takes the float32 product of the scales
                pm, pe = quant.f32_parts(x.scales[0])
                qm, qe = quant.f32_parts(sw)
                ym, ye = quant.f32_parts(y.scales[0])
                pq, pe2 = quant.round_to(pm * qm, 1, pe + qe, 24)
                if pe2 + 23 < -126:
                    raise self.err("input scale * filter scale underflows float32")
                q, e = quant.to_double(pq, ym, pe2 - ye)
                m, s = quant.quantize_multiplier(q, e)
            else:
                m, s = quant.multiplier((x.scales[0], sw), (y.scales[0],))
            if s > 30:
                raise self.err("effective scale of channel %d is too large" % c)
            mults.append(m)
            shifts.append(s)
        return bias, mults, shifts

    def geometry(self, x, y, kh, kw, padding, sh, swd, dh, dw):
        n, H, W, C = x.shape
        oh, ph = _pad_out(padding, H, kh, sh, dh)
        ow, pw = _pad_out(padding, W, kw, swd, dw)
        if oh < 1 or ow < 1:
            raise self.err("output would be empty")
        return n, H, W, C, oh, ow, ph, pw

    def spatial_opts(self, utype, base):
        padding = self.opt(utype, 0, "<b", 0)
        sw = self.opt(utype, 1, "<i", 0)
        sh = self.opt(utype, 2, "<i", 0)
        if padding not in (0, 1):
            raise self.err("padding %d is invalid" % padding)
        if sw < 1 or sh < 1 or sw > 64 or sh > 64:
            raise self.err("stride %dx%d is invalid" % (sh, sw))
        dw = self.opt(utype, base, "<i", 1)
        dh = self.opt(utype, base + 1, "<i", 1)
        if dw < 1 or dh < 1 or dw > 64 or dh > 64:
            raise self.err("dilation %s is invalid" % (dh if dh < 1 or dh > 64 else dw))
        return padding, sh, sw, dh, dw


class _ConvOp(_Conv):
    def prepare(self):
        self.counts(2, 3)
        x = self.t(0)
        w = self.t(1)
        b = self.t(2, True)
        y = self.out()
        self.activation_input(x)
        self.int8(w, "filter", per_tensor=False)
        self.int8(y, "output")
        if len(x.shape) != 4 or len(w.shape) != 4 or len(y.shape) != 4:
            raise self.err("input, filter and output must be 4-D")
        if w.data is None:
            raise self.err("filter %d must be constant" % w.idx)
        padding, sh, sw, dh, dw = self.spatial_opts(1, 4)
        act = self.act(3, 1)
        oc, kh, kw, ic = w.shape
        n, H, W, C, oh, ow, ph, pw = self.geometry(x, y, kh, kw, padding, sh, sw, dh, dw)
        if ic != C:
            raise self.err("filter has %d input channels, input has %d" % (ic, C))
        if y.shape != (n, oh, ow, oc):
            raise self.err("output shape %s, expected %s" % (list(y.shape), [n, oh, ow, oc]))
        if kh * kw * ic > 32768:
            raise self.err("%d taps per output is too many" % (kh * kw * ic))
        bias, mults, shifts = self.channel_params(x, w, b, y, oc, 0, True)
        lo, hi = quant.act_range(act, y.zp, y.scales[0])
        self.pc = _pc(bias, mults, shifts)
        self.g = array("i", [H, W, C, kh, kw, oh, ow, sh, sw, dh, dw, ph, pw, 256 - x.zp,
                             y.zp + 256, lo + 256, hi + 256, oc])
        self.n = n
        self.xstep = H * W * C
        self.ystep = oh * ow * oc
        self.wrow = kh * kw * ic
        self.noc = oc
        self.ip.stream_setup(self, w, oc, self.wrow)

    def run(self, arena):
        x = self.ip.tensors[self.ins[0]]
        y = self.ip.tensors[self.outs[0]]
        for bi in range(self.n):
            xo = x.off + bi * self.xstep
            yo = y.off + bi * self.ystep
            if self.stream is None:
                kernels.conv(arena, xo, self.wbuf, self.wpos, 0, self.noc, self.pc, arena, yo,
                          self.g)
            else:
                ip = self.ip
                j = 0
                while j < self.noc:
                    j1 = ip.stream_read(self, j)
                    kernels.conv(arena, xo, ip.chunk, 0, j, j1, self.pc, arena, yo, self.g)
                    j = j1


class _DwOp(_Conv):
    def prepare(self):
        self.counts(2, 3)
        x = self.t(0)
        w = self.t(1)
        b = self.t(2, True)
        y = self.out()
        self.activation_input(x)
        self.int8(w, "filter", per_tensor=False)
        self.int8(y, "output")
        if len(x.shape) != 4 or len(w.shape) != 4 or len(y.shape) != 4:
            raise self.err("input, filter and output must be 4-D")
        if w.data is None:
            raise self.err("filter %d must be constant" % w.idx)
        padding, sh, sw, dh, dw = self.spatial_opts(2, 5)
        mult = self.opt(2, 3, "<i", 1)
        act = self.act(4, 2)
        one, kh, kw, oc = w.shape
        n, H, W, C, oh, ow, ph, pw = self.geometry(x, y, kh, kw, padding, sh, sw, dh, dw)
        if one != 1:
            raise self.err("filter dimension 0 is %d, expected 1" % one)
        if mult < 1 or oc != C * mult:
            raise self.err("depth_multiplier %d: %d input channels cannot give %d outputs"
                           % (mult, C, oc))
        if y.shape != (n, oh, ow, oc):
            raise self.err("output shape %s, expected %s" % (list(y.shape), [n, oh, ow, oc]))
        bias, mults, shifts = self.channel_params(x, w, b, y, oc, 3, True)
        lo, hi = quant.act_range(act, y.zp, y.scales[0])
        self.pc = _pc(bias, mults, shifts)
        self.g = array("i", [H, W, C, kh, kw, oh, ow, sh, sw, dh, dw, ph, pw, 256 - x.zp,
                             y.zp + 256, lo + 256, hi + 256, oc, mult])
        self.n = n
        self.xstep = H * W * C
        self.ystep = oh * ow * oc
        self.wbuf, self.wpos = self.ip.const(w, ram=True)

    def run(self, arena):
        x = self.ip.tensors[self.ins[0]]
        y = self.ip.tensors[self.outs[0]]
        for bi in range(self.n):
            kernels.dwconv(arena, x.off + bi * self.xstep, self.wbuf, self.wpos, self.pc,
                        arena, y.off + bi * self.ystep, self.g)


class _FcOp(_Conv):
    def prepare(self):
        self.counts(2, 3)
        x = self.t(0)
        w = self.t(1)
        b = self.t(2, True)
        y = self.out()
        self.activation_input(x)
        self.int8(w, "filter", per_tensor=False)
        self.int8(y, "output")
        act = self.act(0, 8)
        fmt = self.opt(8, 1, "<b", 0)
        if fmt != 0:
            raise self.err("weights_format %d is not supported" % fmt)
        if len(w.shape) != 2 or w.data is None:
            raise self.err("filter %d must be a constant 2-D tensor" % w.idx)
        nout, k = w.shape
        if x.count % k:
            raise self.err("input of %d values is not a multiple of %d" % (x.count, k))
        batches = x.count // k
        if y.count != batches * nout or y.shape[-1] != nout:
            raise self.err("output shape %s, expected %d x %d"
                           % (list(y.shape), batches, nout))
        if k > 32768:
            raise self.err("%d inputs per output is too many" % k)
        bias, mults, shifts = self.channel_params(x, w, b, y, nout, 0, len(w.scales) > 1)
        # fold the input offset: acc = sum (x+128)(w+128) - 128 sum(x+128) + const
        raw = None
        wsum = [0] * nout
        for j in range(nout):
            raw = self.ip.src.read(w.data[0] + j * k, k, self.what)
            s = 0
            for v in raw:
                s += v - 256 if v > 127 else v
            wsum[j] = s
        off = -x.zp
        consts = [bias[j] + (off - 128) * wsum[j] for j in range(nout)]
        lo, hi = quant.act_range(act, y.zp, y.scales[0])
        self.pc = _pc(consts, mults, shifts)
        self.g = array("i", [y.zp + 256, lo + 256, hi + 256])
        self.n = batches
        self.k = k
        self.nout = nout
        self.ip.stream_setup(self, w, nout, k)

    def run(self, arena):
        x = self.ip.tensors[self.ins[0]]
        y = self.ip.tensors[self.outs[0]]
        k = self.k
        for bi in range(self.n):
            xo = x.off + bi * k
            yo = y.off + bi * self.nout - 0
            if self.stream is None:
                kernels.fc(arena, xo, k, self.wbuf, self.wpos, 0, self.nout, self.pc, arena, yo,
                        self.g)
            else:
                ip = self.ip
                j = 0
                while j < self.nout:
                    j1 = ip.stream_read(self, j)
                    kernels.fc(arena, xo, k, ip.chunk, 0, j, j1, self.pc, arena, yo, self.g)
                    j = j1


class _PoolOp(_Op):
    def prepare(self):
        self.counts(1, 1)
        x = self.t(0)
        y = self.out()
        self.activation_input(x)
        self.int8(y, "output")
        if len(x.shape) != 4 or len(y.shape) != 4:
            raise self.err("input and output must be 4-D")
        padding = self.opt(5, 0, "<b", 0)
        sw = self.opt(5, 1, "<i", 0)
        sh = self.opt(5, 2, "<i", 0)
        fw = self.opt(5, 3, "<i", 0)
        fh = self.opt(5, 4, "<i", 0)
        act = self.act(5, 5)
        if padding not in (0, 1):
            raise self.err("padding %d is invalid" % padding)
        if sw < 1 or sh < 1 or sw > 64 or sh > 64:
            raise self.err("stride %dx%d is invalid" % (sh, sw))
        if fw < 1 or fh < 1 or fw > 256 or fh > 256:
            raise self.err("filter %dx%d is invalid" % (fh, fw))
        n, H, W, C = x.shape
        oh, ph = _pad_out(padding, H, fh, sh, 1)
        ow, pw = _pad_out(padding, W, fw, sw, 1)
        if y.shape != (n, oh, ow, C):
            raise self.err("output shape %s, expected %s" % (list(y.shape), [n, oh, ow, C]))
        if x.scales != y.scales or x.zps != y.zps:
            raise self.err("input and output quantization must be equal")
        lo, hi = quant.act_range(act, y.zp, y.scales[0])
        self.g = array("i", [H, W, C, fh, fw, oh, ow, sh, sw, ph, pw, lo + 256, hi + 256,
                             1 if self.code == _AVERAGE_POOL_2D else 0])
        self.n = n
        self.xstep = H * W * C
        self.ystep = oh * ow * C

    def run(self, arena):
        x = self.ip.tensors[self.ins[0]]
        y = self.ip.tensors[self.outs[0]]
        for bi in range(self.n):
            kernels.pool(arena, x.off + bi * self.xstep, arena, y.off + bi * self.ystep, self.g)


def _bcast(shape_a, shape_b, shape_y, err):
    """4-D broadcast strides (element units) of a and b for output shape y."""
    r = len(shape_y)
    if r > 4 or len(shape_a) > r or len(shape_b) > r:
        raise err("broadcast of %s and %s to %s is not supported"
                  % (list(shape_a), list(shape_b), list(shape_y)))
    dims = [1] * (4 - r) + list(shape_y)
    out = []
    for s in (shape_a, shape_b):
        s4 = [1] * (4 - len(s)) + list(s)
        st = [0] * 4
        acc = 1
        for k in range(3, -1, -1):
            if s4[k] == dims[k]:
                st[k] = acc if dims[k] > 1 else 0
            elif s4[k] == 1:
                st[k] = 0
            else:
                raise err("shapes %s and %s do not broadcast to %s"
                          % (list(shape_a), list(shape_b), list(shape_y)))
            acc *= s4[k]
        out.append(st)
    for k in range(4):
        full = [1] * (4 - len(shape_a)) + list(shape_a)
        fb = [1] * (4 - len(shape_b)) + list(shape_b)
        if dims[k] != max(full[k], fb[k]):
            raise err("output shape %s does not match inputs %s and %s"
                      % (list(shape_y), list(shape_a), list(shape_b)))
    return dims, out[0], out[1]


class _BinOp(_Op):
    def prepare(self):
        self.counts(2, 2)
        a = self.t(0)
        b = self.t(1)
        y = self.out()
        for t, w in ((a, "input"), (b, "input")):
            if t.type != _I8 or len(t.scales) != 1:
                raise self.err("%s %d must be INT8 with per-tensor quantization"
                               % (w, t.idx))
        self.int8(y, "output")
        mul = self.code == _MUL
        act = self.act(0, 21 if mul else 11)
        dims, sa, sb = _bcast(a.shape, b.shape, y.shape, self.err)
        lo, hi = quant.act_range(act, y.zp, y.scales[0])
        t = array("i", bytes(4 * 512)) if not mul else array("i", (0,))
        if mul:
            m, s = quant.multiplier((a.scales[0], b.scales[0]), (y.scales[0],))
        else:
            # TFLM add: inputs scaled by s_i / (2 max s) after << 20, output by
            # 2 max s / (2^20 s_out); all three via QuantizeMultiplier
            big = a.scales[0] if quant.f32_value(a.scales[0]) >= quant.f32_value(b.scales[0]) \
                else b.scales[0]
            for base, tt in ((0, a), (256, b)):
                mi, si = quant.multiplier((tt.scales[0],), (big,), -1)
                for u in range(256):
                    v = (u - 256 if u > 127 else u) - tt.zp
                    t[base + u] = quant.mbqm(v << 20, mi, si) + (1 << 29)
            m, s = quant.multiplier((big,), (y.scales[0],), 1 - 20)
        if s > 30:
            raise self.err("effective scale is too large")
        self.tab = t
        self.g = array("i", [1 if mul else 0] + dims + sa + sb
                       + [y.zp + 256, lo + 256, hi + 256, 256 - a.zp, 256 - b.zp, m, s + 32])

    def bind(self):
        ip = self.ip
        self.ab, self.ao = self.loc(ip.tensors[self.ins[0]])
        self.bb, self.bo = self.loc(ip.tensors[self.ins[1]])
        self.yo = ip.tensors[self.outs[0]].off

    def run(self, arena):
        kernels.binop(self.ab, self.ao, self.bb, self.bo, arena, self.yo, self.g, self.tab)


class _LutOp(_Op):
    """LOGISTIC, TANH, RELU, RELU6 and int8 QUANTIZE: one 256-byte table each."""

    def prepare(self):
        self.counts(1, 1)
        x = self.t(0)
        y = self.out()
        self.activation_input(x)
        self.int8(y, "output")
        if x.count != y.count:
            raise self.err("input and output sizes differ")
        code = self.code
        if code in (_LOGISTIC, _TANH):
            logistic = code == _LOGISTIC
            want_zp = -128 if logistic else 0
            want_scale = 0x3B800000 if logistic else 0x3C000000  # 1/256, 1/128
            if y.zp != want_zp or y.scales[0] != want_scale:
                raise self.err("output must have scale 1/%d and zero point %d"
                               % (256 if logistic else 128, want_zp))
            try:
                self.tab = quant.act_table("LOGISTIC" if logistic else "TANH", x.zp, x.scales[0])
            except quant.QuantError as e:
                raise self.err(str(e))
            return
        if code == _RELU6:
            # TFLM Relu6Quantized: clamp to [zp, zp + round(6 / s)] of the input, no
            # requantization
            lo, hi = quant.act_range(3, x.zp, x.scales[0])
            tab = bytearray(256)
            for u in range(256):
                v = u - 256 if u > 127 else u
                v = lo if v < lo else hi if v > hi else v
                tab[u] = v & 0xFF
            self.tab = tab
            return
        if code == _QUANTIZE:
            m, s = quant.multiplier((x.scales[0],), (y.scales[0],))
            lo, hi = -128, 127
        else:
            # TFLM ReluQuantized: out_zp + MBQM(x - in_zp, s_in / s_out), then clamped
            m, s = quant.multiplier((x.scales[0],), (y.scales[0],))
            lo, hi = quant.act_range(1, y.zp, y.scales[0])
        if s > 30:
            raise self.err("effective scale is too large")
        tab = bytearray(256)
        for u in range(256):
            v = quant.mbqm((u - 256 if u > 127 else u) - x.zp, m, s) + y.zp
            v = lo if v < lo else hi if v > hi else v
            tab[u] = v & 0xFF
        self.tab = tab

    def run(self, arena):
        ip = self.ip
        x = ip.tensors[self.ins[0]]
        kernels.lut(arena, x.off, arena, ip.tensors[self.outs[0]].off, x.count, self.tab)


class _CopyOp(_Op):
    """RESHAPE (a copy, as TFLM does) and CONCATENATION (int8, copies bytes as TFLM)."""

    def prepare(self):
        y = self.out()
        if self.code == _RESHAPE:
            self.counts(1, 2)
            x = self.t(0)
            self.activation_input(x)
            if y.type != x.type or y.count != x.count:
                raise self.err("output %s does not hold the input's %d values"
                               % (list(y.shape), x.count))
            self.plan = ((0, 0, x.nbytes),)
            self.outer = 1
            self.ostride = x.nbytes
            return
        self.counts(1, 16)
        if self.act(1, 10) != 0:
            raise self.err("fused activation is not supported")
        axis = self.opt(10, 0, "<i", 0)
        r = len(y.shape)
        if axis < 0:
            axis += r
        if axis < 0 or axis >= r or r > 4:
            raise self.err("axis %d is invalid for %d-D output" % (axis, r))
        self.int8(y, "output", per_tensor=False)
        plan = []
        tot = 0
        inner = 1
        for d in y.shape[axis + 1:]:
            inner *= d
        outer = 1
        for d in y.shape[:axis]:
            outer *= d
        for k in range(len(self.ins)):
            x = self.t(k)
            if x.type != _I8 or len(x.shape) != r:
                raise self.err("input %d must be INT8 and %d-D" % (x.idx, r))
            for dd in range(r):
                if dd != axis and x.shape[dd] != y.shape[dd]:
                    raise self.err("input %d shape %s does not fit output %s"
                                   % (x.idx, list(x.shape), list(y.shape)))
            n = x.shape[axis] * inner
            plan.append((k, tot, n))
            tot += n
        if tot != y.shape[axis] * inner:
            raise self.err("inputs do not fill axis %d of the output" % axis)
        self.plan = tuple(plan)
        self.outer = outer
        self.ostride = tot

    def bind(self):
        ip = self.ip
        self.srcs = [self.loc(ip.tensors[self.ins[k]]) for k, _, _ in self.plan]
        self.yo = ip.tensors[self.outs[0]].off

    def run(self, arena):
        yo = self.yo
        srcs = self.srcs
        plan = self.plan
        for o in range(self.outer):
            for i in range(len(plan)):
                p = plan[i]
                n = p[2]
                b = srcs[i]
                kernels.copy(b[0], b[1] + o * n, arena, yo + o * self.ostride + p[1], n)


class _SoftmaxOp(_Op):
    def prepare(self):
        self.counts(1, 1)
        x = self.t(0)
        y = self.out()
        self.activation_input(x)
        self.int8(y, "output")
        if y.zp != -128 or y.scales[0] != 0x3B800000:
            raise self.err("int8 output must have scale 1/256 and zero point -128")
        if x.shape != y.shape:
            raise self.err("input and output shapes differ")
        beta = self.opt(9, 0, "<I", 0)
        try:
            tab = quant.softmax_exp_table(beta, x.scales[0])
        except quant.QuantError as e:
            raise self.err(str(e))
        self.tab = array("i", [v if v > 0 else 0 for v in tab])
        self.depth = x.shape[-1]
        self.rows = x.count // self.depth
        if self.depth > 256:
            raise self.err("rows of %d values: at most 256 are supported" % self.depth)
        self.r = array("i", (0, 0, 0, 0))

    def run(self, arena):
        ip = self.ip
        xo = ip.tensors[self.ins[0]].off
        yo = ip.tensors[self.outs[0]].off
        d = self.depth
        r = self.r
        for i in range(self.rows):
            kernels.smax_sum(arena, xo + i * d, d, self.tab, r)
            kernels.smax_recip(r)
            kernels.smax_out(arena, xo + i * d, d, self.tab, r, arena, yo + i * d)


class _MeanOp(_Op):
    def prepare(self):
        self.counts(2, 2)
        x = self.t(0)
        ax = self.t(1)
        y = self.out()
        self.activation_input(x)
        self.int8(y, "output")
        keep = self.opt(27, 0, "<B", 0)
        if ax.type != _I32 or ax.data is None:
            raise self.err("axis tensor %d must be constant INT32" % ax.idx)
        r = len(x.shape)
        if r > 4:
            raise self.err("input of %d dimensions, at most 4 are supported" % r)
        raw = self.ip.src.read(ax.data[0], ax.data[1], self.what)
        axes = set()
        for a in struct.unpack("<%di" % ax.count, raw):
            if a < -r or a >= r:
                raise self.err("axis %d is invalid for %d-D input" % (a, r))
            axes.add(a % r)
        want = [1 if k in axes else x.shape[k] for k in range(r)]
        if not keep:
            want = [x.shape[k] for k in range(r) if k not in axes]
        if y.count != (1 if not want else eval_prod(want)) or \
                [d for d in y.shape if d != 1] != [d for d in want if d != 1]:
            raise self.err("output shape %s, expected %s" % (list(y.shape), want))
        dims = [1] * (4 - r) + list(x.shape)
        red = [False] * (4 - r) + [k in axes for k in range(r)]
        ostr = [0] * 4
        acc = 1
        for k in range(3, -1, -1):
            if not red[k]:
                ostr[k] = acc
                acc *= dims[k]
        n = x.count // y.count
        self.g = array("i", dims + ostr + [y.count])
        # TFLM: 4-D input, keep_dims, axes {1, 2}: reference_integer_ops::Mean
        self.hw = r == 4 and keep and axes == {1, 2} and ax.count == 2
        self.thr = array("i", self.thresholds(x, y, n))
        self.scratch = 4 * y.count

    def thresholds(self, x, y, n):
        # f(S) = TFLM's output for the input sum S (monotone): 255 biased thresholds
        same = x.zps == y.zps and x.scales == y.scales
        f32 = _f32
        if self.hw:
            # reference_integer_ops::Mean folds 1/n into the multiplier
            m, sh = quant.multiplier((x.scales[0],), (y.scales[0],))
            k = 0
            while n >> (k + 1):
                k += 1
            k = min(k, 32, 31 + sh)
            m = (m << k) // n
            sh -= k
            zpi = x.zp
            zpo = y.zp

            def f(s):
                a = quant.mbqm(s - n * zpi, m, sh) + zpo
                return -128 if a < -128 else 127 if a > 127 else a
        elif not same:
            scale = f32(quant.f32_value(x.scales[0]) / quant.f32_value(y.scales[0]))
            bias = f32(-x.zp * scale)
            fn = f32(float(n))
            zpo = y.zp

            def f(s):
                v = f32(f32(f32(float(s)) / fn) * scale)
                v = f32(v + bias)
                rv = _roundf(v) + zpo
                return -128 if rv < -128 else 127 if rv > 127 else int(rv)
        else:
            def f(s):
                q = abs(s) // n
                q = q if s >= 0 else -q
                return ((q + 128) & 0xFF) - 128

        thr = []
        lo_s = -128 * n
        hi_s = 127 * n
        for k in range(255):
            want = k - 127
            if f(hi_s) < want:
                thr.append(0x3FFFFFFF)
                continue
            a, b = lo_s, hi_s
            while a < b:
                mid = (a + b) // 2
                if f(mid) >= want:
                    b = mid
                else:
                    a = mid + 1
            thr.append(a + 128 * n)
        return thr

    def run(self, arena):
        ip = self.ip
        kernels.mean(arena, ip.tensors[self.ins[0]].off, self.g, arena, self.sc_off >> 2, arena,
                  ip.tensors[self.outs[0]].off, self.thr)


def eval_prod(lst):
    n = 1
    for d in lst:
        n *= d
    return n


_F32BUF = array("f", (0.0,))


def _f32(v):
    """Round a float to float32 (exact for one op's result: the double-rounding theorem
    holds for +, -, *, / when the double has at least 2 * 24 + 2 bits)."""
    _F32BUF[0] = v
    return _F32BUF[0]


def _roundf(v):
    """TfLiteRound on a float32 value: half away from zero."""
    a = abs(v)
    f = float(int(a))
    if a - f >= 0.5:
        f += 1.0
    return f if v >= 0 else -f


class _QuantOp(_Op):
    """QUANTIZE float32 -> int8 and DEQUANTIZE int8 -> float32 (allocate floats)."""

    def prepare(self):
        self.counts(1, 1)
        x = self.t(0)
        y = self.out()
        if x.count != y.count:
            raise self.err("input and output sizes differ")
        if self.code == _QUANTIZE:
            if x.type != _F32:
                raise self.err("input %d is %s, expected FLOAT32 or INT8"
                               % (x.idx, _tname(x.type)))
            self.int8(y, "output")
            self.scale = quant.f32_value(y.scales[0])
            self.zp = y.zp
        else:
            self.activation_input(x)
            if y.type != _F32:
                raise self.err("output %d is %s, expected FLOAT32" % (y.idx, _tname(y.type)))
            self.scale = quant.f32_value(x.scales[0])
            self.zp = x.zp
        if x.data is not None:
            raise self.err("constant input is not supported")

    def run(self, arena):
        ip = self.ip
        x = ip.tensors[self.ins[0]]
        y = ip.tensors[self.outs[0]]
        sc = self.scale
        zp = self.zp
        if self.code == _QUANTIZE:
            for i in range(x.count):
                (v,) = struct.unpack_from("<f", arena, x.off + 4 * i)
                q = int(_roundf(_f32(v / sc))) + zp
                arena[y.off + i] = (-128 if q < -128 else 127 if q > 127 else q) & 0xFF
        else:
            for i in range(x.count):
                u = arena[x.off + i]
                struct.pack_into("<f", arena, y.off + 4 * i,
                                 _f32(sc * ((u - 256 if u > 127 else u) - zp)))


_NAMES = {_ADD: "ADD", _AVERAGE_POOL_2D: "AVERAGE_POOL_2D", _CONCATENATION: "CONCATENATION",
          _CONV_2D: "CONV_2D", _DEPTHWISE_CONV_2D: "DEPTHWISE_CONV_2D",
          _DEQUANTIZE: "DEQUANTIZE", _FULLY_CONNECTED: "FULLY_CONNECTED",
          _LOGISTIC: "LOGISTIC", _MAX_POOL_2D: "MAX_POOL_2D", _MUL: "MUL", _RELU: "RELU",
          _RELU6: "RELU6", _RESHAPE: "RESHAPE", _SOFTMAX: "SOFTMAX", _TANH: "TANH",
          _MEAN: "MEAN", _QUANTIZE: "QUANTIZE"}
_OPS = {_ADD: _BinOp, _MUL: _BinOp, _AVERAGE_POOL_2D: _PoolOp, _MAX_POOL_2D: _PoolOp,
        _CONCATENATION: _CopyOp, _RESHAPE: _CopyOp, _CONV_2D: _ConvOp,
        _DEPTHWISE_CONV_2D: _DwOp, _FULLY_CONNECTED: _FcOp, _LOGISTIC: _LutOp,
        _TANH: _LutOp, _RELU: _LutOp, _RELU6: _LutOp, _SOFTMAX: _SoftmaxOp,
        _MEAN: _MeanOp, _QUANTIZE: _QuantOp, _DEQUANTIZE: _QuantOp}


def _plan(sizes, first, last):
    """TFLM-style greedy planner: largest buffer first, each at the lowest offset that
    does not overlap (in offset and in lifetime) a buffer already placed."""
    order = sorted(range(len(sizes)), key=lambda i: -sizes[i])
    placed = []  # (offset, end, index)
    offs = [0] * len(sizes)
    top = 0
    for i in order:
        size = (sizes[i] + _ALIGN - 1) // _ALIGN * _ALIGN
        live = sorted(p for p in placed if first[p[2]] <= last[i] and first[i] <= last[p[2]])
        cand = 0
        for o, e, _ in live:
            if cand + size <= o:
                break
            if e > cand:
                cand = e
        offs[i] = cand
        placed.append((cand, cand + size, i))
        if cand + size > top:
            top = cand + size
    return offs, top


class Interpreter:
    """Load, check and plan a model; invoke() runs it.

    model: bytes-like (used in place) or a file path. arena_limit: refuse models whose
    planned arena is bigger. stream: keep FULLY_CONNECTED / CONV_2D weights in the file
    (path models only) and read them through a chunk buffer of `chunk` bytes.
    """

    def __init__(self, model, arena_limit=0, stream=False, chunk=2048):
        self.file = None
        if isinstance(model, str):
            self.file = open(model, "rb")
            src = Source(f=self.file)
        else:
            src = Source(data=model)
            stream = False
        self.src = src
        self.streaming = stream
        self.chunk_size = chunk
        self.chunk = None
        self._ram = {}
        try:
            self._load(arena_limit)
        except (TFLiteError, MemoryError):
            self.close()
            raise
        except (ValueError, IndexError, KeyError, TypeError, OverflowError, quant.QuantError) as e:
            self.close()
            raise TFLiteError("malformed model: %r" % (e,))

    def close(self):
        if self.file is not None and not self.streaming:
            self.file.close()
            self.file = None

    def _load(self, arena_limit):
        m = Model(self.src)
        self.model = m
        self.metadata = m.metadata
        self.tensors = m.tensors
        ops = []
        for i, (code, ins, outs, otype, opts) in enumerate(m.ops):
            cls = _OPS.get(code)
            if cls is None:
                if code < 0:
                    raise TFLiteError("op %d: custom operators are not supported" % i)
                from tinyml.opnames import name

                raise TFLiteError("op %d: unsupported op %s (builtin %d)"
                                  % (i, name(code), code))
            if code == _QUANTIZE and ins and 0 <= ins[0] < len(m.tensors) and \
                    m.tensors[ins[0]].type == _I8:
                cls = _LutOp  # int8 -> int8 requantization
            op = cls(self, i, code, ins, outs, otype, opts)
            ops.append(op)
        self.ops = ops
        self.inputs = [m.tensors[i] for i in m.inputs]
        self.outputs = [m.tensors[i] for i in m.outputs]
        for t in self.inputs:
            if t.data is not None:
                raise TFLiteError("input tensor %d is constant" % t.idx)
        for op in ops:
            op.stream = None
            op.prepare()
        self._plan_arena(arena_limit)
        for op in ops:
            op.bind()
        self._inviews = [memoryview(self.arena)[t.off:t.off + t.nbytes] for t in self.inputs]
        self._outviews = [memoryview(self.arena)[t.off:t.off + t.nbytes] for t in self.outputs]

    def _plan_arena(self, arena_limit):
        n = len(self.ops)
        first = {}
        last = {}
        for t in self.inputs:
            first[t.idx] = 0
            last[t.idx] = 0
        for i, op in enumerate(self.ops):
            for k in op.ins:
                if k >= 0 and self.tensors[k].data is None:
                    if k not in first:
                        raise TFLiteError("%s: input tensor %d is never written" % (op.what, k))
                    last[k] = i
            for k in op.outs:
                if self.tensors[k].data is not None:
                    raise TFLiteError("%s: output tensor %d is constant" % (op.what, k))
                if k in first and k not in [t.idx for t in self.inputs]:
                    raise TFLiteError("%s: tensor %d is written twice" % (op.what, k))
                first.setdefault(k, i)
                last.setdefault(k, i)
        for t in self.outputs:
            if t.idx not in first:
                raise TFLiteError("output tensor %d is never written" % t.idx)
            last[t.idx] = n - 1
        idx = list(first)
        sizes = [self.tensors[k].nbytes for k in idx]
        fs = [first[k] for k in idx]
        ls = [last[k] for k in idx]
        scr = []
        for i, op in enumerate(self.ops):
            if op.scratch:
                scr.append(op)
                sizes.append(op.scratch)
                fs.append(i)
                ls.append(i)
        offs, top = _plan(sizes, fs, ls)
        for j, k in enumerate(idx):
            self.tensors[k].off = offs[j]
        for j, op in enumerate(scr):
            op.sc_off = offs[len(idx) + j]
        self.arena_bytes = top
        if arena_limit and top > arena_limit:
            raise TFLiteError("model needs an arena of %d bytes, the limit is %d"
                              % (top, arena_limit))
        self.arena = bytearray(top)

    # -- constants -------------------------------------------------------------------

    def const(self, t, ram=False):
        """(buffer, offset) of a constant tensor's bytes: in place in a bytes model,
        else a RAM copy (made once)."""
        if self.src.data is not None:
            return self.src.data, t.data[0]
        b = self._ram.get(t.idx)
        if b is None:
            b = self.src.read(t.data[0], t.data[1], "tensor %d" % t.idx)
            self._ram[t.idx] = b
        return b, 0

    def stream_setup(self, op, w, rows, rowlen):
        if not self.streaming:
            op.wbuf, op.wpos = self.const(w)
            return
        per = self.chunk_size // rowlen
        if per < 1:
            per = 1
        if per > rows:
            per = rows
        if self.chunk is None or len(self.chunk) < per * rowlen:
            self.chunk = bytearray(per * rowlen)
            self._chunkmv = memoryview(self.chunk)
        op.stream = (w.data[0], rowlen, per, rows)
        op.views = None

    def stream_read(self, op, j):
        """Read weight rows j.. into the chunk buffer; returns the end row."""
        pos, rowlen, per, rows = op.stream
        if op.views is None or op.views[2] is not self.chunk:
            full = self._chunkmv[:per * rowlen]
            tail = rows % per
            op.views = (full, self._chunkmv[:tail * rowlen] if tail else full, self.chunk)
        j1 = j + per
        mv = op.views[0]
        if j1 > rows:
            j1 = rows
            mv = op.views[1]
        f = self.file
        f.seek(pos + j * rowlen)
        f.readinto(mv)
        return j1

    # -- running ---------------------------------------------------------------------

    def input(self, i=0):
        """Writable memoryview of input tensor i's bytes in the arena."""
        return self._inviews[i]

    def output(self, i=0):
        """memoryview of output tensor i's bytes (valid until the next invoke)."""
        return self._outviews[i]

    def invoke(self):
        a = self.arena
        for op in self.ops:
            op.run(a)

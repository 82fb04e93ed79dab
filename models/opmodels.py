"""Reference int8 models built with models/tflbuild.py, no TensorFlow: single ops and small
multi-op nets, for the interpreter tests (tests/tinyml) and `aiot bench infer`.

Each builder returns (model bytes, input dtype, input shape without batch). Scales and
weights come from a seeded generator, so a failing case is reproducible by its id.
"""

from __future__ import annotations

import numpy as np
from aiotkit.models.tflbuild import ModelBuilder


def f32(x):
    return np.float32(x)


def _rng(seed):
    return np.random.default_rng(seed)


def _w(rng, shape):
    return rng.integers(-127, 128, shape).astype(np.int8)


def _bias(rng, n, scales):
    return (rng.integers(-2000, 2000, n).astype(np.int32),
            np.asarray(scales, dtype=np.float32))


def fc(seed, k=24, n=10, batch=1, perch=False, act="NONE", bias=True, keep=False):
    rng = _rng(seed)
    mb = ModelBuilder()
    sx = f32(rng.uniform(0.01, 0.1))
    x = mb.add_tensor([batch, k], "int8", scale=sx, zero_point=int(rng.integers(-20, 20)))
    sw = rng.uniform(0.002, 0.03, n).astype(np.float32) if perch else f32(rng.uniform(0.002, 0.03))
    w = mb.add_tensor([n, k], "int8", scale=sw, zero_point=0, data=_w(rng, (n, k)))
    ins = [x, w]
    if bias:
        bv, _ = _bias(rng, n, 0)
        bs = (sx * np.asarray(sw, np.float32)).astype(np.float32)
        ins.append(mb.add_tensor([n], "int32", scale=bs if perch else float(bs), zero_point=0,
                                 data=bv))
    y = mb.add_tensor([batch, n], "int8", scale=f32(rng.uniform(0.05, 0.5)),
                      zero_point=int(rng.integers(-30, 30)))
    mb.add_op("FULLY_CONNECTED", ins, [y], fused_activation_function=act, keep_num_dims=keep)
    return mb.build([x], [y]), np.int8, (batch, k)


def conv(seed, hw=(7, 6), c=3, oc=4, k=(3, 3), stride=(1, 1), dil=(1, 1), pad="SAME",
         perch=True, act="NONE"):
    rng = _rng(seed)
    mb = ModelBuilder()
    h, wd = hw
    sx = f32(rng.uniform(0.01, 0.1))
    x = mb.add_tensor([1, h, wd, c], "int8", scale=sx, zero_point=int(rng.integers(-20, 20)))
    sw = rng.uniform(0.002, 0.03, oc).astype(np.float32) if perch else f32(0.01)
    w = mb.add_tensor([oc, k[0], k[1], c], "int8", scale=sw, zero_point=0,
                      data=_w(rng, (oc, k[0], k[1], c)))
    bs = (sx * np.asarray(sw, np.float32)).astype(np.float32)
    b = mb.add_tensor([oc], "int32", scale=bs if perch else float(bs), zero_point=0,
                      data=rng.integers(-2000, 2000, oc).astype(np.int32))
    oh, ow = _outsz(h, k[0], stride[0], dil[0], pad), _outsz(wd, k[1], stride[1], dil[1], pad)
    y = mb.add_tensor([1, oh, ow, oc], "int8", scale=f32(rng.uniform(0.05, 0.5)),
                      zero_point=int(rng.integers(-30, 30)))
    mb.add_op("CONV_2D", [x, w, b], [y], padding=pad, stride_h=stride[0], stride_w=stride[1],
              dilation_h_factor=dil[0], dilation_w_factor=dil[1], fused_activation_function=act)
    return mb.build([x], [y]), np.int8, (1, h, wd, c)


def dwconv(seed, hw=(7, 6), c=3, mult=1, k=(3, 3), stride=(1, 1), dil=(1, 1), pad="SAME",
           act="NONE"):
    rng = _rng(seed)
    mb = ModelBuilder()
    h, wd = hw
    oc = c * mult
    sx = f32(rng.uniform(0.01, 0.1))
    x = mb.add_tensor([1, h, wd, c], "int8", scale=sx, zero_point=int(rng.integers(-20, 20)))
    sw = rng.uniform(0.002, 0.03, oc).astype(np.float32)
    w = mb.add_tensor([1, k[0], k[1], oc], "int8", scale=sw, zero_point=0,
                      quantized_dimension=3, data=_w(rng, (1, k[0], k[1], oc)))
    b = mb.add_tensor([oc], "int32", scale=(sx * sw).astype(np.float32), zero_point=0,
                      data=rng.integers(-2000, 2000, oc).astype(np.int32))
    oh, ow = _outsz(h, k[0], stride[0], dil[0], pad), _outsz(wd, k[1], stride[1], dil[1], pad)
    y = mb.add_tensor([1, oh, ow, oc], "int8", scale=f32(rng.uniform(0.05, 0.5)),
                      zero_point=int(rng.integers(-30, 30)))
    mb.add_op("DEPTHWISE_CONV_2D", [x, w, b], [y], padding=pad, stride_h=stride[0],
              stride_w=stride[1], dilation_h_factor=dil[0], dilation_w_factor=dil[1],
              depth_multiplier=mult, fused_activation_function=act)
    return mb.build([x], [y]), np.int8, (1, h, wd, c)


def _outsz(n, k, s, d, pad):
    eff = (k - 1) * d + 1
    return (n + s - 1) // s if pad == "SAME" else (n + s - eff) // s


def pool(seed, op="AVERAGE_POOL_2D", hw=(7, 6), c=3, k=(3, 3), stride=(2, 2), pad="SAME",
         act="NONE"):
    rng = _rng(seed)
    mb = ModelBuilder()
    h, wd = hw
    s, zp = f32(rng.uniform(0.01, 0.1)), int(rng.integers(-20, 20))
    x = mb.add_tensor([1, h, wd, c], "int8", scale=s, zero_point=zp)
    oh, ow = _outsz(h, k[0], stride[0], 1, pad), _outsz(wd, k[1], stride[1], 1, pad)
    y = mb.add_tensor([1, oh, ow, c], "int8", scale=s, zero_point=zp)
    mb.add_op(op, [x], [y], padding=pad, stride_h=stride[0], stride_w=stride[1],
              filter_height=k[0], filter_width=k[1], fused_activation_function=act)
    return mb.build([x], [y]), np.int8, (1, h, wd, c)


def binary(seed, op="ADD", shape=(1, 4, 5), other=(1, 4, 5), act="NONE", const=True):
    """op(x, c) with a constant c, or op(x, requant(x)) (two activations)."""
    rng = _rng(seed)
    mb = ModelBuilder()
    x = mb.add_tensor(list(shape), "int8", scale=f32(rng.uniform(0.01, 0.1)),
                      zero_point=int(rng.integers(-20, 20)))
    s2, z2 = f32(rng.uniform(0.01, 0.1)), int(rng.integers(-20, 20))
    if const:
        b = mb.add_tensor(list(other), "int8", scale=s2, zero_point=z2,
                          data=rng.integers(-128, 128, other).astype(np.int8))
    else:
        b = mb.add_tensor(list(shape), "int8", scale=s2, zero_point=z2)
        mb.add_op("QUANTIZE", [x], [b])
    outshape = list(np.broadcast_shapes(tuple(shape), tuple(other) if const else tuple(shape)))
    y = mb.add_tensor(outshape, "int8", scale=f32(rng.uniform(0.02, 0.2) * (3 if op == "MUL" else 1)),
                      zero_point=int(rng.integers(-20, 20)))
    mb.add_op(op, [x, b], [y], fused_activation_function=act)
    return mb.build([x], [y]), np.int8, tuple(shape)


def unary(seed, op, shape=(1, 4, 6), **opts):
    rng = _rng(seed)
    mb = ModelBuilder()
    s, zp = f32(rng.uniform(0.005, 0.2)), int(rng.integers(-40, 40))
    x = mb.add_tensor(list(shape), "int8", scale=s, zero_point=zp)
    if op == "LOGISTIC" or op == "SOFTMAX":
        ys, yz = 1 / 256, -128
    elif op == "TANH":
        ys, yz = 1 / 128, 0
    elif op == "RELU6":
        ys, yz = s, zp
    else:
        ys, yz = f32(rng.uniform(0.005, 0.2)), int(rng.integers(-40, 40))
    y = mb.add_tensor(list(shape), "int8", scale=ys, zero_point=yz)
    mb.add_op(op, [x], [y], **opts)
    return mb.build([x], [y]), np.int8, tuple(shape)


def reshape_concat(seed):
    rng = _rng(seed)
    mb = ModelBuilder()
    s, zp = f32(0.05), 3
    x = mb.add_tensor([1, 2, 3, 4], "int8", scale=s, zero_point=zp)
    r = mb.add_tensor([1, 6, 4], "int8", scale=s, zero_point=zp)
    mb.add_op("RESHAPE", [x], [r], new_shape=[1, 6, 4])
    c = mb.add_tensor([1, 6, 2], "int8", scale=s, zero_point=zp,
                      data=rng.integers(-128, 128, (1, 6, 2)).astype(np.int8))
    y = mb.add_tensor([1, 6, 6], "int8", scale=s, zero_point=zp)
    mb.add_op("CONCATENATION", [r, c], [y], axis=-1)
    return mb.build([x], [y]), np.int8, (1, 2, 3, 4)


def mean(seed, shape=(1, 4, 5, 3), axes=(1, 2), keep=True, same=True):
    rng = _rng(seed)
    mb = ModelBuilder()
    s, zp = f32(rng.uniform(0.01, 0.1)), int(rng.integers(-20, 20))
    x = mb.add_tensor(list(shape), "int8", scale=s, zero_point=zp)
    a = mb.add_tensor([len(axes)], "int32", data=np.asarray(axes, np.int32))
    r = len(shape)
    ax = {(k + r) % r for k in axes}
    oshape = [1 if k in ax else d for k, d in enumerate(shape)] if keep else \
        [d for k, d in enumerate(shape) if k not in ax]
    if same:
        y = mb.add_tensor(oshape, "int8", scale=s, zero_point=zp)
    else:
        y = mb.add_tensor(oshape, "int8", scale=f32(rng.uniform(0.005, 0.05)),
                          zero_point=int(rng.integers(-20, 20)))
    mb.add_op("MEAN", [x, a], [y], keep_dims=keep)
    return mb.build([x], [y]), np.int8, tuple(shape)


def quantize_float(seed, shape=(1, 12)):
    """float32 -> QUANTIZE -> int8 -> DEQUANTIZE -> float32? No: two models."""
    rng = _rng(seed)
    mb = ModelBuilder()
    x = mb.add_tensor(list(shape), "float32")
    y = mb.add_tensor(list(shape), "int8", scale=f32(rng.uniform(0.01, 0.1)),
                      zero_point=int(rng.integers(-20, 20)))
    mb.add_op("QUANTIZE", [x], [y])
    return mb.build([x], [y]), np.float32, tuple(shape)


def dequantize(seed, shape=(1, 12)):
    rng = _rng(seed)
    mb = ModelBuilder()
    x = mb.add_tensor(list(shape), "int8", scale=f32(rng.uniform(0.01, 0.1)),
                      zero_point=int(rng.integers(-20, 20)))
    y = mb.add_tensor(list(shape), "float32")
    mb.add_op("DEQUANTIZE", [x], [y])
    return mb.build([x], [y]), np.int8, tuple(shape)


def autoencoder(seed, dims=(64, 32, 16, 8, 16, 32, 64)):
    """MLPerf Tiny anomaly-detection style FC autoencoder (reduced), ReLU between layers."""
    rng = _rng(seed)
    mb = ModelBuilder()
    s = f32(0.05)
    x = mb.add_tensor([1, dims[0]], "int8", scale=s, zero_point=-2)
    cur, cs = x, s
    for i in range(1, len(dims)):
        k, n = dims[i - 1], dims[i]
        sw = rng.uniform(0.002, 0.02, n).astype(np.float32)
        w = mb.add_tensor([n, k], "int8", scale=sw, zero_point=0, data=_w(rng, (n, k)))
        b = mb.add_tensor([n], "int32", scale=(cs * sw).astype(np.float32), zero_point=0,
                          data=rng.integers(-500, 500, n).astype(np.int32))
        ys = f32(rng.uniform(0.05, 0.2))
        last = i == len(dims) - 1
        y = mb.add_tensor([1, n], "int8", scale=ys, zero_point=0 if last else -128)
        mb.add_op("FULLY_CONNECTED", [cur, w, b], [y],
                  fused_activation_function="NONE" if last else "RELU")
        cur, cs = y, ys
    return mb.build([x], [cur]), np.int8, (1, dims[0])


def small_cnn(seed):
    """conv -> depthwise -> conv -> avgpool -> reshape -> FC -> softmax."""
    rng = _rng(seed)
    mb = ModelBuilder()

    def q(shape, s, zp):
        return mb.add_tensor(shape, "int8", scale=f32(s), zero_point=zp)

    def convlayer(op, x, sx, shape_in, oc, k, stride, mult=1):
        _n, h, w, c = shape_in
        if op == "CONV_2D":
            wshape, ocn = [oc, k, k, c], oc
        else:
            wshape, ocn = [1, k, k, c * mult], c * mult
        sw = rng.uniform(0.005, 0.03, ocn).astype(np.float32)
        wt = mb.add_tensor(wshape, "int8", scale=sw, zero_point=0,
                           quantized_dimension=0 if op == "CONV_2D" else 3,
                           data=_w(rng, wshape))
        b = mb.add_tensor([ocn], "int32", scale=(f32(sx) * sw).astype(np.float32),
                          zero_point=0, data=rng.integers(-500, 500, ocn).astype(np.int32))
        oh, ow = (h + stride - 1) // stride, (w + stride - 1) // stride
        ys = float(rng.uniform(0.05, 0.2))
        y = q([1, oh, ow, ocn], ys, -128)
        opts = {"padding": "SAME", "stride_h": stride, "stride_w": stride,
                    "fused_activation_function": "RELU6"}
        if op != "CONV_2D":
            opts["depth_multiplier"] = mult
        mb.add_op(op, [x, wt, b], [y], **opts)
        return y, ys, [1, oh, ow, ocn]

    x = q([1, 12, 12, 1], 0.05, 0)
    y, s, shp = convlayer("CONV_2D", x, 0.05, [1, 12, 12, 1], 6, 3, 2)
    y, s, shp = convlayer("DEPTHWISE_CONV_2D", y, s, shp, 0, 3, 1, mult=2)
    y, s, shp = convlayer("CONV_2D", y, s, shp, 8, 1, 1)
    p = q([1, 1, 1, 8], s, -128)
    mb.add_op("AVERAGE_POOL_2D", [y], [p], padding="VALID", stride_h=1, stride_w=1,
              filter_height=shp[1], filter_width=shp[2])
    r = q([1, 8], s, -128)
    mb.add_op("RESHAPE", [p], [r], new_shape=[1, 8])
    sw = rng.uniform(0.005, 0.03, 4).astype(np.float32)
    w = mb.add_tensor([4, 8], "int8", scale=sw, zero_point=0, data=_w(rng, (4, 8)))
    b = mb.add_tensor([4], "int32", scale=(f32(s) * sw).astype(np.float32), zero_point=0,
                      data=rng.integers(-500, 500, 4).astype(np.int32))
    lg = q([1, 4], 0.1, 3)
    mb.add_op("FULLY_CONNECTED", [r, w, b], [lg])
    out = mb.add_tensor([1, 4], "int8", scale=1 / 256, zero_point=-128)
    mb.add_op("SOFTMAX", [lg], [out], beta=1.0)
    return mb.build([x], [out]), np.int8, (1, 12, 12, 1)


CASES = {
    "fc_tensor": lambda: fc(1),
    "fc_channel_relu": lambda: fc(2, perch=True, act="RELU"),
    "fc_relu6_batch2": lambda: fc(3, batch=2, act="RELU6"),
    "fc_n1to1_nobias": lambda: fc(4, act="RELU_N1_TO_1", bias=False, perch=True),
    "fc_k5": lambda: fc(5, k=5, n=3),
    "conv_same": lambda: conv(10),
    "conv_valid_s2": lambda: conv(11, pad="VALID", stride=(2, 2), act="RELU"),
    "conv_same_s2_odd": lambda: conv(12, hw=(8, 7), stride=(2, 2), k=(2, 3), act="RELU6"),
    "conv_dilated": lambda: conv(13, dil=(2, 2), hw=(8, 8), k=(3, 3)),
    "conv_tensorq_1x1": lambda: conv(14, k=(1, 1), perch=False, c=5, oc=3),
    "dw_same": lambda: dwconv(20),
    "dw_mult2_s2": lambda: dwconv(21, mult=2, stride=(2, 2), act="RELU"),
    "dw_valid_dil": lambda: dwconv(22, pad="VALID", dil=(2, 1), hw=(8, 7)),
    "avgpool_same": lambda: pool(30),
    "avgpool_valid": lambda: pool(31, pad="VALID", k=(2, 2), stride=(1, 1), act="RELU"),
    "maxpool_same": lambda: pool(32, op="MAX_POOL_2D"),
    "maxpool_valid_relu6": lambda: pool(33, op="MAX_POOL_2D", pad="VALID", act="RELU6"),
    "add_const": lambda: binary(40),
    "add_bcast_relu": lambda: binary(41, other=(1, 1, 5), act="RELU"),
    "add_two_inputs": lambda: binary(42, const=False),
    "mul_const": lambda: binary(43, op="MUL"),
    "mul_bcast_relu6": lambda: binary(44, op="MUL", shape=(1, 3, 4, 2), other=(2,),
                                      act="RELU6"),
    "mul_two_inputs": lambda: binary(45, op="MUL", const=False),
    "softmax": lambda: unary(50, "SOFTMAX", shape=(1, 3, 10), beta=1.0),
    "softmax_beta": lambda: unary(51, "SOFTMAX", shape=(2, 7), beta=0.37),
    "logistic": lambda: unary(52, "LOGISTIC"),
    "logistic_wide": lambda: _logistic_wide(),
    "tanh": lambda: unary(54, "TANH"),
    "relu": lambda: unary(55, "RELU"),
    "relu6": lambda: unary(56, "RELU6"),
    "quantize_int8": lambda: unary(57, "QUANTIZE"),
    "reshape_concat": lambda: reshape_concat(60),
    "mean_hw_same": lambda: mean(70),
    "mean_hw_requant": lambda: mean(71, same=False),
    "mean_last_nokeep": lambda: mean(72, axes=(-1,), keep=False, same=False),
    "quantize_float": lambda: quantize_float(80),
    "dequantize": lambda: dequantize(81),
    "autoencoder": lambda: autoencoder(90),
    "small_cnn": lambda: small_cnn(91),
}


def _logistic_wide():
    mb = ModelBuilder()
    x = mb.add_tensor([1, 16], "int8", scale=f32(0.3), zero_point=7)
    y = mb.add_tensor([1, 16], "int8", scale=1 / 256, zero_point=-128)
    mb.add_op("LOGISTIC", [x], [y])
    return mb.build([x], [y]), np.int8, (1, 16)


def inputs_for(dtype, shape, n=1000, seed=0):
    """n random inputs plus one all -128 and one all 127 (floats: a spread of reals)."""
    rng = np.random.default_rng(seed)
    if dtype == np.float32:
        x = (rng.standard_normal((n,) + shape) * 3).astype(np.float32)
        edge = np.stack([np.full(shape, -1e3, np.float32), np.full(shape, 1e3, np.float32),
                         np.linspace(-2, 2, int(np.prod(shape)), dtype=np.float32).reshape(shape)])
        return np.concatenate([x, edge])
    x = rng.integers(-128, 128, (n,) + shape).astype(np.int8)
    edge = np.stack([np.full(shape, -128, np.int8), np.full(shape, 127, np.int8)])
    return np.concatenate([x, edge])

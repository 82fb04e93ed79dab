"""An int8 MLP (quant.QModel) as a standard .tflite flatbuffer, written by tflbuild.

Graph: input int8 [1, n] -> FULLY_CONNECTED (fused RELU) ... -> FULLY_CONNECTED
[-> SOFTMAX]. Weights int8 per-channel (axis 0), biases int32 with per-channel scale
s_in * s_w. The metadata entry ``aiot.model`` holds what the node needs to feed and read
the model (kind, labels, feature spec, per-feature input map, threshold) as compact JSON;
the full card with metrics sits beside the file.
"""

from __future__ import annotations

import json

from aiotkit.models.quant import QModel


def to_tflite(qm: QModel, *, description: str, meta: dict | None = None) -> bytes:
    from aiotkit.models.tflbuild import ModelBuilder

    mb = ModelBuilder(description=description)
    n_in = qm.layers[0].weights.shape[1]
    x = mb.add_tensor([1, n_in], "int8", scale=qm.in_scale, zero_point=qm.in_zero_point,
                      name="features")
    first = x
    s_in = qm.in_scale
    for k, L in enumerate(qm.layers):
        o, i = L.weights.shape
        w = mb.add_tensor([o, i], "int8", scale=L.w_scales, zero_point=0,
                          quantized_dimension=0, data=L.weights, name=f"fc{k}/weights")
        b = mb.add_tensor([o], "int32", scale=[s_in * s for s in L.w_scales], zero_point=0,
                          quantized_dimension=0, data=L.bias, name=f"fc{k}/bias")
        last = k == len(qm.layers) - 1
        name = ("logits" if qm.softmax else "reconstruction") if last else f"fc{k}/out"
        y = mb.add_tensor([1, o], "int8", scale=L.out_scale, zero_point=L.out_zero_point,
                          name=name)
        mb.add_op("FULLY_CONNECTED", [x, w, b], [y],
                  fused_activation_function="RELU" if L.relu else "NONE")
        x, s_in = y, L.out_scale
    if qm.softmax:
        p = mb.add_tensor([1, qm.layers[-1].weights.shape[0]], "int8", scale=1.0 / 256,
                          zero_point=-128, name="probabilities")
        mb.add_op("SOFTMAX", [x], [p], beta=1.0)
        x = p
    if meta is not None:
        mb.add_metadata("aiot.model", json.dumps(meta, sort_keys=True,
                                                 separators=(",", ":")).encode())
    return mb.build(inputs=[first], outputs=[x])

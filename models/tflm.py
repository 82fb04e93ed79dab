"""Run an int8 .tflite with the tflite-micro interpreter (TFLM reference kernels): the
bit-exact reference of the node's interpreter, used for every metric in a model card."""

from __future__ import annotations

from aiotkit.models.errors import ModelError


def run(model: bytes, q_in):
    """int8 outputs (n, outputs) for int8 inputs (n, inputs), one invoke per row."""
    import numpy as np

    try:
        from tflite_micro.python.tflite_micro import runtime
    except ImportError as e:
        raise ModelError("evaluating a model needs tflite-micro: pip install tflite-micro") from e
    try:
        interp = runtime.Interpreter.from_bytes(bytes(model))
    except Exception as e:  # TFLM reports a bad model as RuntimeError/ValueError
        raise ModelError(f"tflite-micro cannot load the model: {e}") from e
    x = np.asarray(q_in, dtype=np.int8)
    outs = []
    for i in range(len(x)):
        interp.set_input(x[i:i + 1], 0)
        interp.invoke()
        outs.append(np.array(interp.get_output(0), dtype=np.int8).reshape(-1))
    if not outs:
        return np.zeros((0, 0), dtype=np.int8)
    return np.stack(outs)

"""Gateway-side inference with LiteRT for nodes that send features only.

A node too small to run a model (or running none) reports its window's features,
object 33001 (resource i = output i of its feature spec, in physical units:
``gateway/objects/README.md``, ``firmware/FEATURES.md``), and no decision (33002). For
such a Send the gateway runs the configured models (``[inference]``: a classifier, an
anomaly model, or both) with LiteRT (``ai-edge-litert``, the maintained successor of
``tflite-runtime``) and stores the decision the way a node's is stored: a Send of
``/33002/0/*`` records for that endpoint, committed through the registry
(``Registry.submit_send``), so it reaches the database, the listeners (alerts, rollups,
the shadow check) and the uplink exactly as a node's decision does. What marks it as the
gateway's: the stored Send's token is ``aiot-gw`` (``TOKEN``), resource 11 (inference
time) is the gateway's, and resources 7 / 8 name the models the gateway ran; there are
no raw feature outputs (9, 10). Resource 0 is the window's sequence (/33000/0/0) when
the Send has one; the records carry the features' SenML time.

**Inputs.** Model input j reads feature ``index`` of the model's input map (the
``aiot.model`` metadata, ``models/inputq.py``); a feature x in physical units becomes
``q = clamp(floor(x * multiplier * 2**(frac - shift) + 1/2) + zero_point, -128, 127)``:
the node's integer definition, applied to the float it sent. ``frac`` is the output's
fixed-point format (from the model card's input map when it has one, else the feature
spec's table in FEATURES.md). A node sends a float32, so where its int32 output does not
fit 24 bits the gateway may round one step differently from a node that ran the model.
**int8 models** get ``q``; their outputs are read as the node reads them (label: the
first largest, confidence ``(q + 128) / 256``; anomaly score ``sum((out - q)**2)``,
anomalous above the model's ``threshold``). **Float models** (float32 input) get the
real value the int8 input stands for, ``(x / step + zero_point) / 128`` clamped to
-1..127/128; a classifier's output is its probabilities, an anomaly model's score is
``round(sum((128 * (out - in))**2))`` in the same units as the int8 model's.

**Agreement with the reference.** LiteRT runs its builtin kernels without the default
delegate (``BUILTIN_WITHOUT_DEFAULT_DELEGATES``), the closest to TFLite Micro's
reference kernels that the node is bit-exact with; LiteRT's int8 requantization still
rounds differently on a few values (measured on the shipped models over 5,000 random
int8 inputs: 7 classifier rows with an output off by up to 3 steps, none with another
label; 238 anomaly rows off by one step, scores within 0.7 %, no flag changed). Tests
check that bound (``tests/gateway/test_litert.py``).

Needs numpy and ``ai-edge-litert`` (``pip install 'aiotkit[infer]'``); without them the
feature is off and the daemon says so in one line.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import GatewayError, NotFound
from ..logs import PeerLog
from ..lwm2m.registry import Registry, RegistryEvent
from ..lwm2m.senml import CF_SENML_JSON, Record

if TYPE_CHECKING:
    from ..config import InferenceConfig

__all__ = ["TOKEN", "GatewayInference", "InferenceUnavailable", "LiteModel", "decide",
           "features_of", "load_model", "quantize_features"]

log = logging.getLogger("aiotkit.gateway.inference")
_peer_log = PeerLog(log)

TOKEN = b"aiot-gw"  # the token of the Sends the gateway makes (its decisions)
FEATURES = "/33001/0/"
DECISION = "/33002/0/"
WINDOW_SEQ = "/33000/0/0"
MAX_PENDING = 256  # decisions waiting for their COMMIT at most; more are skipped, counted
QMIN, QMAX = -128, 127
# fractional bits of each feature output (firmware/FEATURES.md "fixed-point formats"),
# for model input maps that do not carry them
_FRAC = {"mean": 15, "rms": 15, "std": 15, "crest": 16, "skewness": 16, "kurtosis": 16,
         "centroid": 8, "dominant": 8}


class InferenceUnavailable(GatewayError):
    """numpy or ai-edge-litert is missing, or a configured model cannot be used."""


@dataclass
class LiteModel:
    """One .tflite model with its ``aiot.model`` metadata, run by a LiteRT interpreter."""

    id: bytes  # first 8 bytes of the file's SHA-256, as the node reports it
    path: Path
    kind: str  # "classifier" | "anomaly"
    meta: dict[str, Any]
    inputs: list[dict[str, Any]]  # the input map, each with "frac"
    interp: Any = field(repr=False)
    in_index: int = 0
    out_index: int = 0
    in_dtype: Any = None

    @property
    def is_float(self) -> bool:
        import numpy as np

        return bool(self.in_dtype == np.float32)

    def run(self, x: Any) -> Any:
        """One output row for one input row (int8 codes, or float32 reals)."""
        import numpy as np

        self.interp.set_tensor(self.in_index, np.asarray(x, dtype=self.in_dtype).reshape(1, -1))
        self.interp.invoke()
        return np.array(self.interp.get_tensor(self.out_index)).reshape(-1)


def _litert() -> Any:
    try:
        import numpy  # noqa: F401
        from ai_edge_litert import interpreter
    except ImportError as e:
        raise InferenceUnavailable(
            f"gateway-side inference needs numpy and ai-edge-litert ({e.name} is missing):"
            " pip install 'aiotkit[infer]'") from None
    return interpreter


def load_model(where: str | Path, *, meta: Mapping[str, Any] | None = None) -> LiteModel:
    """The model at ``where``: a shipped model's name (``bearing-fault``), a model
    folder (its ``model.tflite``) or a .tflite file. ``meta``: use this instead of the
    file's ``aiot.model`` metadata. ``InferenceUnavailable`` says what is wrong."""
    interpreter = _litert()
    from aiotkit.models.tflmeta import aiot_model

    path = Path(where)
    if not path.suffix and not path.is_absolute() and len(path.parts) == 1:
        from aiotkit import models

        path = Path(models.__file__).parent / str(where)
    if path.is_dir():
        path = path / "model.tflite"
    try:
        data = path.read_bytes()
    except OSError as e:
        raise InferenceUnavailable(f"model {where}: cannot read {path}:"
                                   f" {e.strerror or e}") from e
    try:
        found = dict(meta) if meta is not None else aiot_model(data)
    except ValueError as e:
        raise InferenceUnavailable(f"model {path}: no aiot.model metadata: {e}") from e
    kind = str(found.get("kind"))
    if kind not in ("classifier", "anomaly"):
        raise InferenceUnavailable(f"model {path}: kind {kind!r} is neither classifier nor"
                                   " anomaly")
    inputs = _input_map(path, found)
    try:
        interp = interpreter.Interpreter(
            model_content=data, num_threads=1,
            experimental_op_resolver_type=interpreter.OpResolverType
            .BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        interp.allocate_tensors()
        i = interp.get_input_details()[0]
        o = interp.get_output_details()[0]
    except (ValueError, RuntimeError) as e:
        raise InferenceUnavailable(f"model {path}: LiteRT cannot load it: {e}") from e
    if int(i["shape"][-1]) != len(inputs):
        raise InferenceUnavailable(f"model {path}: {i['shape'][-1]} inputs, the input map"
                                   f" has {len(inputs)}")
    return LiteModel(hashlib.sha256(data).digest()[:8], path, kind, found, inputs, interp,
                     int(i["index"]), int(o["index"]), i["dtype"])


def _input_map(path: Path, meta: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The model's input map, each entry with ``frac`` (from the card beside the model
    when it has the map, else from the feature spec's formats)."""
    inputs = [dict(d) for d in meta.get("inputs") or []]
    if not inputs:
        raise InferenceUnavailable(f"model {path}: no input map in its metadata")
    card: dict[str, Any] = {}
    try:
        card = json.loads((path.parent / "card.json").read_text("utf-8"))
    except (OSError, ValueError):
        pass
    by_name = {d.get("name"): d for d in (card.get("input") or {}).get("features") or []}
    spec = meta.get("feature_spec") or {}
    for d in inputs:
        if "frac" not in d:
            known = by_name.get(d.get("name"))
            d["frac"] = int(known["frac"]) if known and "frac" in known else _frac_of(
                str(d.get("name", "")), spec)
        for key in ("index", "multiplier", "shift", "zero_point"):
            if not isinstance(d.get(key), int):
                raise InferenceUnavailable(f"model {path}: input {d.get('name')!r} has no"
                                           f" integer {key}")
    return inputs


def _frac_of(name: str, spec: Mapping[str, Any]) -> int:
    if name in _FRAC:
        return _FRAC[name]
    if name.startswith("mag_"):
        return 8
    for feat in spec.get("features") or []:
        if isinstance(feat, dict) and (
                (feat.get("name") == "bands" and name.startswith("band_"))
                or (feat.get("name") == "envelope" and name.startswith("env_"))):
            return int(feat.get("frac", 0))
    return 0


def features_of(records: Sequence[Record]) -> tuple[dict[int, float], bool] | None:
    """(feature index -> value, has a decision) of one Send's records; None when it
    carries no features."""
    feats: dict[int, float] = {}
    decided = False
    for r in records:
        path = r.path
        if path.startswith(FEATURES):
            rest = path[len(FEATURES):]
            if rest.isdigit() and isinstance(r.value, int | float) \
                    and not isinstance(r.value, bool):
                feats[int(rest)] = float(r.value)
        elif path.startswith(DECISION):
            decided = True
    return (feats, decided) if feats else None


def quantize_features(feats: Mapping[int, float], inputs: Sequence[Mapping[str, Any]]
                      ) -> tuple[list[int], list[float]]:
    """(int8 codes, unrounded reals x/step + zero_point) of the model inputs; KeyError
    names a feature the node did not send, ValueError a value that is not finite."""
    q: list[int] = []
    exact: list[float] = []
    for d in inputs:
        x = feats[int(d["index"])]
        if not math.isfinite(x):
            raise ValueError(f"feature {d['index']} is {x}")
        r = x * d["multiplier"] * 2.0 ** (int(d["frac"]) - int(d["shift"]))
        exact.append(r + d["zero_point"])
        q.append(max(QMIN, min(QMAX, math.floor(r + 0.5) + int(d["zero_point"]))))
    return q, exact


def decide(model: LiteModel, feats: Mapping[int, float]) -> dict[int, Any]:
    """The /33002/0 resources ``model`` decides for one window's features."""
    import numpy as np

    q, exact = quantize_features(feats, model.inputs)
    if model.is_float:
        x_real = np.clip(np.array(exact, dtype=np.float64) / 128.0, -1.0, 127 / 128)
        y = model.run(x_real.astype(np.float32)).astype(np.float64)
    else:
        y = model.run(q)
    out: dict[int, Any] = {}
    if model.kind == "classifier":
        label = int(np.argmax(y))  # the first largest, as the node
        conf = float(y[label]) if model.is_float else (int(y[label]) + 128) / 256
        labels = model.meta.get("labels") or []
        out[1] = label
        out[2] = str(labels[label]) if label < len(labels) else str(label)
        out[3] = conf
        out[7] = model.id
    else:
        if model.is_float:
            score = round(float(((128.0 * (y - x_real)) ** 2).sum()))
        else:
            score = int(((y.astype(np.int64) - np.array(q, dtype=np.int64)) ** 2).sum())
        threshold = int(model.meta.get("threshold", 0))
        out[4] = score
        out[5] = score > threshold
        out[6] = threshold
        out[8] = model.id
    return out


_KINDS = {bool: "vb", str: "vs", bytes: "vd"}


def decision_records(values: Mapping[int, Any], t: float | None) -> list[Record]:
    out = []
    for rid in sorted(values):
        v = values[rid]
        kind = "vb" if isinstance(v, bool) else _KINDS.get(type(v), "v")
        out.append(Record(f"{DECISION}{rid}", kind, v, t))  # type: ignore[arg-type]
    return out


class GatewayInference:
    """Registry listener: decides for every Send with features and no decision (from
    ``endpoints`` only, when given) and stores the decision as a Send of its own."""

    def __init__(self, registry: Registry, models: Sequence[LiteModel], *,
                 endpoints: Sequence[str] = (),
                 clock: Callable[[], float] = time.time) -> None:
        if not models:
            raise InferenceUnavailable("no model configured ([inference] classifier,"
                                       " anomaly)")
        self._registry = registry
        self.models = list(models)
        self._endpoints = frozenset(endpoints)
        self._clock = clock
        self._pending = 0
        self._serial = 0
        self.decisions = 0  # decisions stored since start
        self.skipped = 0  # Sends with features the gateway could not decide for
        self.futures: set[asyncio.Future[Any]] = set()  # decisions on their way (tests)

    @classmethod
    def from_config(cls, cfg: InferenceConfig, registry: Registry, *,
                    clock: Callable[[], float] = time.time) -> GatewayInference:
        models = [load_model(where) for where in (cfg.classifier, cfg.anomaly) if where]
        return cls(registry, models, endpoints=cfg.endpoints, clock=clock)

    def describe(self) -> str:
        who = ", ".join(sorted(self._endpoints)) if self._endpoints else \
            "every endpoint that sends features without a decision"
        kinds = ", ".join(f"{m.kind} {m.path.parent.name}"
                          f" ({'float' if m.is_float else 'int8'})" for m in self.models)
        return f"{kinds}; for {who}"

    def on_event(self, event: RegistryEvent) -> None:
        if event.kind != "send" or not event.records:
            return
        if self._endpoints and event.endpoint not in self._endpoints:
            return
        found = features_of(event.records)
        if found is None or found[1]:
            return  # no features, or the node decided itself
        if self._pending >= MAX_PENDING:
            self.skipped += 1
            _peer_log.warning("infer-busy", "gateway-side inference: %d decisions waiting"
                              " to be stored; ep=%s skipped", self._pending, event.endpoint)
            return
        self._decide(event.endpoint, found[0], event.records)

    def _decide(self, endpoint: str, feats: dict[int, float],
                records: Sequence[Record]) -> None:
        started = time.perf_counter()
        values: dict[int, Any] = {}
        try:
            for model in self.models:
                values.update(decide(model, feats))
        except (KeyError, ValueError) as e:
            self.skipped += 1
            _peer_log.warning("infer-features", "gateway-side inference ep=%s: the"
                              " features do not fit the model (%s)", endpoint, e)
            return
        except Exception:  # a LiteRT failure must not stop the gateway
            self.skipped += 1
            log.exception("gateway-side inference ep=%s failed", endpoint)
            return
        values[11] = int((time.perf_counter() - started) * 1e6)
        seq = next((r.value for r in records if r.path == WINDOW_SEQ), None)
        if isinstance(seq, int) and not isinstance(seq, bool):
            values[0] = seq
        t = next((r.time for r in records if r.path.startswith(FEATURES)), None)
        out = decision_records(values, t)
        try:
            reg = self._registry.sender_endpoint(endpoint)
        except NotFound:  # it expired or de-registered meanwhile
            self.skipped += 1
            return
        self._serial += 1
        payload = json.dumps([endpoint, self._serial, self._clock(),
                              [(r.path, _plain(r.value), r.time) for r in out]]).encode()
        self._pending += 1
        future = self._registry.submit_send(reg, token=TOKEN, content_format=CF_SENML_JSON,
                                            payload=payload, records=out)
        self.futures.add(future)
        future.add_done_callback(lambda f: self._stored(endpoint, f))

    def _stored(self, endpoint: str, future: asyncio.Future[Any]) -> None:
        self._pending -= 1
        self.futures.discard(future)
        if future.cancelled():
            return
        e = future.exception()
        if e is not None:
            self.skipped += 1
            log.warning("gateway-side inference ep=%s: the decision was not stored: %s",
                        endpoint, e)
            return
        self.decisions += 1


def _plain(v: Any) -> Any:
    return v.hex() if isinstance(v, bytes) else v

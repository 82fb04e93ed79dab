"""A/B models on the nodes (issue 14, item 5): the model registry and the evaluation of
candidate models.

A node runs a candidate model in shadow beside its active one (firmware/ota/models.py,
Object 9 slot /9/x) and every decision report carries both: /33002/0/13 the candidate's
slot, /14 its id (the first 8 bytes of its .tflite's SHA-256), /18 the windows it ran,
/19 the windows it agreed with the active model, /20 the windows it flagged anomalous
(running counts from its install or the node's boot). ``ModelService.on_event`` (a
registry listener) adds the differences to the candidate's totals in the database
(``model_candidates``: a restart keeps them; a node that rebooted counts from 0 again and
its new counts are added whole). Once the totals reach ``[models] min_windows``, the rule
decides: agreement >= ``min_agreement`` and anomaly rate <= ``max_anomaly_rate`` promote
it (Execute /9/x/10 Activate through device management), anything else refuses it
(Execute /9/x/6 Uninstall); the decision and its reason are stored before the request
goes, and a request that fails is sent again at the node's next report.

The registry: every model version the image store holds (a verified image of payload
type ``model``: its card's name, version and .tflite SHA-256, feature-spec version,
board, signers, security counter), and where models run (``model_placements``: per
node, the active models' and the candidate's ids and slots, from its latest report).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass
from typing import Any

from aiotkit.ota import image as ota_image
from aiotkit.ota.errors import ImageRejected

from ..config import ModelsConfig
from ..inference.shadow import decision_values
from ..lwm2m.registry import RegistryEvent
from ..storage.api import OtaStorage
from ..storage.modeltables import CandidateRow, ModelVersionRow, SqliteModelStorage

__all__ = ["ModelService", "Verdict", "decide"]

log = logging.getLogger("aiotkit.gateway.models")

# /33002/0 resources (gateway/objects/33002.xml)
CLF_ID, AE_ID = 7, 8
C_SLOT, C_ID, C_WINDOWS, C_AGREE, C_ANOMALIES = 13, 14, 18, 19, 20
ACTIVATE, UNINSTALL = 10, 6  # /9 resources (OMA 9.xml)

Execute = Callable[[str, str], Coroutine[Any, Any, Any]]


@dataclass(frozen=True)
class Verdict:
    """What the rule says of a candidate: ``action`` promote, refuse or None (not yet)."""

    action: str | None
    reason: str


def decide(rule: ModelsConfig, windows: int, agree: int, anomalies: int) -> Verdict:
    """The rule of ``[models]`` over a candidate's totals (pure)."""
    if windows < rule.min_windows:
        return Verdict(None, f"{windows} of {rule.min_windows} windows")
    agreement = agree / windows
    rate = anomalies / windows
    said = (f"agreement {agreement:.4f} (min {rule.min_agreement}), anomaly rate {rate:.4f}"
            f" (max {rule.max_anomaly_rate}) over {windows} windows")
    if agreement >= rule.min_agreement and rate <= rule.max_anomaly_rate:
        return Verdict("promote", said)
    return Verdict("refuse", said)


def _hex(v: Any) -> str | None:
    return v.hex() if isinstance(v, bytes) else None


def _count(v: Any) -> int:
    return v if isinstance(v, int) and v >= 0 else 0


class ModelService:
    """Candidate evaluation (``on_event``) and the model registry (``registry()``).
    ``execute(endpoint, path)``: device management's Execute (``dm.execute``)."""

    def __init__(self, rows: SqliteModelStorage, images: OtaStorage | None,
                 images_folder: Any, rule: ModelsConfig, execute: Execute | None, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.rows = rows
        self._images = images
        self._folder = images_folder
        self.rule = rule
        self._execute = execute
        self._clock = clock
        self._tasks: dict[tuple[str, str], asyncio.Task[None]] = {}

    # -- evaluation ----------------------------------------------------------------------

    def on_event(self, event: RegistryEvent) -> None:
        if event.kind != "send" or not event.records:
            return
        v = decision_values(event.records)
        if not v:
            return
        now = self._clock()
        cand = _hex(v.get(C_ID))
        s = v.get(C_SLOT)
        slot = s if isinstance(s, int) else -1
        self._place(event.endpoint, v, cand, slot, now)
        if cand is None:
            return
        row = self.rows.candidate(event.endpoint, cand) or CandidateRow(
            event.endpoint, cand, slot, 0, 0, 0, 0, 0, 0, "evaluating", None, now, now)
        w, a, x = _count(v.get(C_WINDOWS)), _count(v.get(C_AGREE)), _count(v.get(C_ANOMALIES))
        if w < row.seen_windows or a < row.seen_agree or x < row.seen_anomalies:
            dw, da, dx = w, a, x  # the node counts again from 0 (it rebooted)
        else:
            dw, da, dx = w - row.seen_windows, a - row.seen_agree, x - row.seen_anomalies
        row = CandidateRow(row.endpoint, cand, slot, row.windows + dw, row.agree + da,
                           row.anomalies + dx, w, a, x, row.state, row.reason, row.started,
                           now)
        if row.state == "evaluating":
            verdict = decide(self.rule, row.windows, row.agree, row.anomalies)
            if verdict.action is not None:
                state = "promoting" if verdict.action == "promote" else "refusing"
                row = _with(row, state=state, reason=verdict.reason)
                log.info("model candidate ep=%s model=%s slot=%d: %s: %s", row.endpoint,
                         cand, slot, verdict.action, verdict.reason)
        self.rows.put_candidate(row)
        if row.state in ("promoting", "refusing"):
            self._act(row)

    def _place(self, endpoint: str, v: dict[int, Any], cand: str | None, slot: int,
               now: float) -> None:
        # where models run: the active ids (slot from a promoted candidate of this node,
        # else -1: the config's) and the candidate
        promoted = {c.model: c.slot for c in self.rows.candidates(endpoint)
                    if c.state == "promoted"}
        rows = [(m, promoted.get(m, -1), "active")
                for m in (_hex(v.get(CLF_ID)), _hex(v.get(AE_ID))) if m is not None]
        if cand is not None:
            rows.append((cand, slot, "candidate"))
        self.rows.place(endpoint, rows, now)

    def _act(self, row: CandidateRow) -> None:
        key = (row.endpoint, row.model)
        if self._execute is None or not self.rule.act or key in self._tasks:
            return
        res = ACTIVATE if row.state == "promoting" else UNINSTALL
        self._tasks[key] = asyncio.get_running_loop().create_task(
            self._send(row, f"/9/{row.slot}/{res}"), name=f"aiot-model-{row.endpoint}")

    async def _send(self, row: CandidateRow, path: str) -> None:
        key = (row.endpoint, row.model)
        try:
            assert self._execute is not None
            result = await self._execute(row.endpoint, path)
        except Exception as e:  # noqa: BLE001 - tried again at the node's next report
            log.warning("model candidate ep=%s: Execute %s failed (%s); again at its next"
                        " report", row.endpoint, path, e)
            return
        finally:
            self._tasks.pop(key, None)
        now_row = self.rows.candidate(*key) or row
        code = str(getattr(result, "code", "2.04"))
        done = "promoted" if row.state == "promoting" else "refused"
        reason = now_row.reason
        if not code.startswith("2."):  # the node would not (its slot is not in that state)
            done, reason = "refused", f"{reason}; the node answered {code} to {path}"
        self.rows.put_candidate(_with(now_row, state=done, reason=reason,
                                      updated=self._clock()))
        log.info("model candidate ep=%s model=%s: %s (Execute %s)", row.endpoint, row.model,
                 done, path)

    async def shutdown(self) -> None:
        tasks = list(self._tasks.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- registry ------------------------------------------------------------------------

    def sync(self) -> None:
        """Add the image store's model images not yet in the registry."""
        if self._images is None:
            return
        known = {r.image for r in self.rows.versions()}
        for img in self._images.ota_images():
            if img.payload_type != "model" or img.id in known:
                continue
            try:
                data = (self._folder / f"{img.id}.img").read_bytes()
                p = ota_image.parse(data)
                mid = ota_image.ModelId.decode(_tlv(data, p, "AIOT_MODEL_ID"))
                spec = int.from_bytes(_tlv(data, p, "AIOT_FEATURE_SPEC"), "little")
            except (OSError, ValueError, ImageRejected) as e:
                log.warning("model registry: image %s: %s", img.id, e)
                continue
            self.rows.put_version(ModelVersionRow(
                img.id, mid.name, mid.version, mid.sha256.hex(), spec, img.board,
                img.signers, img.security_counter, img.uploaded))

    def registry(self) -> list[dict[str, Any]]:
        """Every model version with its card, signers and where it runs."""
        self.sync()
        places = self.rows.placements()
        out = []
        for v in self.rows.versions():
            short = v.sha256[:16]
            out.append({**asdict(v), "signers": list(v.signers), "runs": [
                {"endpoint": p.endpoint, "slot": p.slot, "role": p.role}
                for p in places if p.model == short]})
        return out

    def candidates(self, endpoint: str | None = None) -> list[dict[str, Any]]:
        return [{**asdict(c), "agreement": c.agree / c.windows if c.windows else None,
                 "anomaly_rate": c.anomalies / c.windows if c.windows else None}
                for c in self.rows.candidates(endpoint)]


def _with(row: CandidateRow, **kw: Any) -> CandidateRow:
    d = asdict(row)
    d.update(kw)
    return CandidateRow(**d)


def _tlv(data: bytes, p: ota_image.ParsedImage, name: str) -> bytes:
    for t in p.tlvs:
        if t.type == ota_image.TLV[name]:
            return data[t.offset:t.offset + t.length]
    raise ValueError(f"no {name}")

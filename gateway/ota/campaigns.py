"""The campaign engine: an image rolled out in waves that stops itself.

A campaign is an image, a target set, waves, ``max_failure_ratio`` and
``report_timeout_s``. Its rules:

- **Target**: the nodes of an inventory (``NodeInfo``: the registry's registrations, or
  a list the operator gives) whose board is the image's (or ``target.board``), whose
  firmware / model version and tag match when given, and, when ``target.endpoints`` is
  given, only those. A node whose board is unknown is taken only when named in
  ``target.endpoints`` (the operator vouches for it). Ordered by endpoint name.
- **Waves** (``parse_waves``): the first is a canary, ``N`` nodes or ``P%`` of the
  target (at least one); each later one ``P%``, the share of the whole target reached
  by its end; a last ``100%`` is implied. Nodes are assigned to waves at creation
  (empty waves dropped) and that assignment is stored.
- **Start**: wave 1's nodes are offered the image (``Delivery.offer``); a node is
  ``offered``, then ``updating`` (it said so), then ``succeeded`` or ``failed``; a node
  that reports nothing for ``report_timeout_s`` after its offer or its last report is
  ``timed_out`` (a failure).
- **Threshold**: as soon as a wave's failures (failed + timed out) over its size pass
  ``max_failure_ratio``, the campaign is ``aborted`` with that reason, the nodes still
  updating are cancelled and no other node is offered anything. A wave starts only when
  every node of the one before ended, within the threshold; after the last one the
  campaign is ``completed``.
- **Operator**: ``pause`` (no new offers; reports, timeouts and the threshold still
  apply), ``resume``, ``abort`` (with the operator's reason).
- **Durable**: every state change is written (``Storage.ota``) before it is acted on; a
  node's offer time is stored before the offer is made, so after a restart a node is
  never offered twice, and its deadline is measured from the stored times. The clock is
  injected; ``step()`` does one round of work and is what the background task repeats.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import GatewayError
from ..storage.api import OtaCampaignRow, OtaNodeRow, OtaStorage
from .delivery import Delivery, UnavailableDelivery
from .errors import OtaServiceError

__all__ = ["CAMPAIGN_STATES", "NODE_STATES", "OUTCOMES", "CampaignEngine", "NodeInfo",
           "Target", "parse_waves", "plan_waves", "select"]

log = logging.getLogger("aiotkit.gateway.ota")

CAMPAIGN_STATES = ("draft", "running", "paused", "aborted", "completed")
NODE_STATES = ("pending", "offered", "updating", "succeeded", "failed", "timed_out")
OUTCOMES = ("updating", "succeeded", "failed")  # what a delivery may report
_ACTIVE = ("running", "paused")
_OPEN = ("offered", "updating")  # waiting for the node
_FINAL = ("succeeded", "failed", "timed_out")
_FAILED = ("failed", "timed_out")
_WAVE = re.compile(r"([0-9]{1,9})(%?)\Z")
MAX_WAIT_S = 60.0  # the background task looks again at least this often (clock jumps)
MAX_WAVES = 20
MAX_NAME = 100


@dataclass(frozen=True)
class NodeInfo:
    """What the engine knows of a node to select it."""

    endpoint: str
    board: str | None = None
    firmware: str | None = None
    model: str | None = None
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class Target:
    """The selection: every field given must match (``board`` defaults to the image's)."""

    board: str | None = None
    firmware: str | None = None
    model: str | None = None
    tag: str | None = None
    endpoints: tuple[str, ...] | None = None

    @classmethod
    def from_json(cls, raw: Any) -> Target:
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise _bad("target is an object: board, firmware, model, tag, endpoints")
        unknown = set(raw) - {"board", "firmware", "model", "tag", "endpoints"}
        if unknown:
            raise _bad(f"target: unknown key {min(unknown)!r}")
        for key in ("board", "firmware", "model", "tag"):
            if raw.get(key) is not None and not isinstance(raw[key], str):
                raise _bad(f"target.{key} is a string")
        eps = raw.get("endpoints")
        if eps is not None and (not isinstance(eps, list)
                                or not all(isinstance(e, str) and e for e in eps)):
            raise _bad("target.endpoints is a list of endpoint names")
        return cls(raw.get("board"), raw.get("firmware"), raw.get("model"), raw.get("tag"),
                   None if eps is None else tuple(eps))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: getattr(self, k) for k in ("board", "firmware", "model",
                                                              "tag")}
        out["endpoints"] = None if self.endpoints is None else list(self.endpoints)
        return out


def _bad(message: str) -> OtaServiceError:
    return OtaServiceError(400, "bad_value", message)


def parse_waves(specs: Sequence[Any]) -> list[tuple[int, bool]]:
    """``["2", "50%", "100%"]`` -> [(2, False), (50, True), (100, True)]: a canary count
    or percentage, then cumulative percentages going up; ``100%`` is added if missing."""
    if not isinstance(specs, (list, tuple)) or not specs:
        raise _bad('waves is a list: a canary ("N" or "P%"), then percentages ("P%")')
    out: list[tuple[int, bool]] = []
    for i, spec in enumerate(specs):
        m = _WAVE.match(str(spec).strip()) if isinstance(spec, (str, int)) else None
        if m is None or isinstance(spec, bool):
            raise _bad(f"wave {i + 1}: {spec!r} is not N or P%")
        n, pct = int(m.group(1)), bool(m.group(2))
        if i > 0 and not pct:
            raise _bad(f"wave {i + 1}: after the canary, waves are percentages (P%)")
        if n < 1 or (pct and n > 100):
            raise _bad(f"wave {i + 1}: {spec!r} out of range (N >= 1, 1% .. 100%)")
        if i > 1 and n <= out[-1][0]:
            raise _bad(f"wave {i + 1}: {spec!r} must reach more than the wave before")
        out.append((n, pct))
    if out[-1] != (100, True):
        out.append((100, True))
    if len(out) > MAX_WAVES:
        raise _bad(f"at most {MAX_WAVES} waves")
    return out


def plan_waves(waves: Sequence[tuple[int, bool]], total: int) -> list[int]:
    """Each wave's size for ``total`` nodes (empty waves dropped)."""
    sizes: list[int] = []
    reached = 0
    for i, (n, pct) in enumerate(waves):
        goal = math.ceil(total * n / 100) if pct else n
        if i == 0:
            goal = max(goal, 1)
        goal = min(goal, total)
        if goal > reached:
            sizes.append(goal - reached)
            reached = goal
    return sizes


def select(nodes: Iterable[NodeInfo], target: Target, board: str) -> list[str]:
    """The endpoints of ``nodes`` that ``target`` takes, for an image for ``board``."""
    want_board = target.board or board
    named = set(target.endpoints) if target.endpoints is not None else None
    out = []
    for n in nodes:
        if named is not None and n.endpoint not in named:
            continue
        if n.board is None:
            if named is None:
                continue  # an unknown board is taken only when the operator named it
        elif n.board != want_board:
            continue
        if target.firmware is not None and n.firmware != target.firmware:
            continue
        if target.model is not None and n.model != target.model:
            continue
        if target.tag is not None and target.tag not in n.tags:
            continue
        out.append(n.endpoint)
    return sorted(set(out))


class CampaignEngine:
    """Campaigns on ``rows`` (``Storage.ota``); ``await start()`` runs the background
    task, ``await shutdown()`` stops it. ``delivery`` may be replaced before start."""

    def __init__(self, rows: OtaStorage, *, delivery: Delivery | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self._rows = rows
        self.delivery: Delivery = delivery or UnavailableDelivery()
        self._clock = clock
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # -- life cycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Resume every running or paused campaign where the database says it is."""
        await self.step()
        self._task = asyncio.create_task(self._run(), name="aiot-ota-campaigns")

    async def shutdown(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    def poke(self) -> None:
        """Look again now (a report came, the clock moved)."""
        self._wake.set()

    async def _run(self) -> None:
        while True:
            try:
                deadline = await self.step()
            except GatewayError as e:  # the database; try again on the next round
                log.error("OTA campaigns: %s", e)
                deadline = None
            wait = MAX_WAIT_S if deadline is None else min(MAX_WAIT_S,
                                                           max(0.0, deadline - self._clock()))
            try:
                async with asyncio.timeout(wait):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()

    # -- operator ------------------------------------------------------------------------

    def create(self, *, name: str, image: str, board: str, target: Target,
               waves: Sequence[Any], max_failure_ratio: float, report_timeout_s: float,
               nodes: Iterable[NodeInfo]) -> int:
        """A draft campaign for ``image`` (for ``board``) over the selected ``nodes``."""
        if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME:
            raise _bad(f"name is 1..{MAX_NAME} characters")
        if (isinstance(max_failure_ratio, bool) or not isinstance(max_failure_ratio,
                                                                  (int, float))
                or not 0 <= max_failure_ratio < 1):
            raise _bad("max_failure_ratio is a number from 0 up to (not including) 1")
        if (isinstance(report_timeout_s, bool) or not isinstance(report_timeout_s,
                                                                 (int, float))
                or not 0 < report_timeout_s <= 30 * 86400):
            raise _bad("report_timeout_s is a number of seconds over 0 (at most 30 days)")
        plan = parse_waves(waves)
        chosen = select(nodes, target, board)
        if not chosen:
            raise OtaServiceError(409, "no_targets", "no node matches the target")
        sizes = plan_waves(plan, len(chosen))
        assignment: list[tuple[str, int]] = []
        at = 0
        for w, size in enumerate(sizes):
            assignment += [(ep, w) for ep in chosen[at:at + size]]
            at += size
        now = self._clock()
        specs = tuple(f"{n}%" if pct else str(n) for n, pct in plan)
        row = OtaCampaignRow(0, name, image, target.to_json(), specs,
                             float(max_failure_ratio), float(report_timeout_s), "draft", 0,
                             None, now, now)
        cid = self._rows.ota_create_campaign(row, assignment)
        log.info("OTA campaign %d %r: image %s, %d nodes in %d waves", cid, name,
                 image[:16], len(chosen), len(sizes))
        return cid

    def campaign(self, cid: int) -> OtaCampaignRow:
        row = self._rows.ota_campaign(cid)
        if row is None:
            raise OtaServiceError(404, "unknown_campaign", f"no campaign {cid}")
        return row

    def campaigns(self) -> list[OtaCampaignRow]:
        return self._rows.ota_campaigns()

    async def start_campaign(self, cid: int) -> OtaCampaignRow:
        async with self._lock:
            row = self._expect(cid, ("draft",), "start")
            busy = sorted({ep.endpoint for ep in self._rows.ota_nodes(cid)
                           if self._elsewhere(ep.endpoint, cid)})
            if busy:
                raise OtaServiceError(409, "node_busy", f"{len(busy)} node(s) are in another"
                                      f" active campaign: {', '.join(busy[:5])}")
            self._set(row, "running")
        await self.step()
        return self.campaign(cid)

    async def pause(self, cid: int) -> OtaCampaignRow:
        async with self._lock:
            self._set(self._expect(cid, ("running",), "pause"), "paused")
        return self.campaign(cid)

    async def resume(self, cid: int) -> OtaCampaignRow:
        async with self._lock:
            self._set(self._expect(cid, ("paused",), "resume"), "running")
        await self.step()
        return self.campaign(cid)

    async def abort(self, cid: int, reason: str = "aborted by the operator") -> OtaCampaignRow:
        async with self._lock:
            row = self._expect(cid, ("draft", "running", "paused"), "abort")
            await self._abort(row, reason)
        return self.campaign(cid)

    def _expect(self, cid: int, states: tuple[str, ...], what: str) -> OtaCampaignRow:
        row = self.campaign(cid)
        if row.state not in states:
            raise OtaServiceError(409, "wrong_state", f"campaign {cid} is {row.state}: cannot"
                                  f" {what} it")
        return row

    def _elsewhere(self, endpoint: str, cid: int) -> bool:
        for other in self._rows.ota_node_campaigns(endpoint, ("pending", *_OPEN)):
            if other != cid and self.campaign(other).state in _ACTIVE:
                return True
        return False

    # -- nodes ---------------------------------------------------------------------------

    def report(self, endpoint: str, outcome: str, reason: str = "") -> bool:
        """What a node said of the image it was offered: ``updating``, ``succeeded`` or
        ``failed`` (``reason``). False when no active campaign waits for it."""
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome is one of {OUTCOMES}")
        now = self._clock()
        for cid in self._rows.ota_node_campaigns(endpoint, _OPEN):
            row = self._rows.ota_campaign(cid)
            if row is None or row.state not in _ACTIVE:
                continue
            self._rows.ota_set_node(cid, endpoint, state=outcome, heard=now,
                                    reason=reason or None)
            log.info("OTA campaign %d: ep=%s %s%s", cid, endpoint, outcome,
                     f" ({reason})" if reason else "")
            self.poke()
            return True
        return False

    def waiting(self, endpoint: str) -> bool:
        """True while an active campaign waits for ``endpoint`` (offered or updating)."""
        for cid in self._rows.ota_node_campaigns(endpoint, _OPEN):
            row = self._rows.ota_campaign(cid)
            if row is not None and row.state in _ACTIVE:
                return True
        return False

    # -- the work ------------------------------------------------------------------------

    async def step(self) -> float | None:
        """One round over every active campaign: time-outs, the threshold, the next wave,
        offers. The earliest deadline still ahead (None: none)."""
        async with self._lock:
            deadlines = []
            for row in self._rows.ota_campaigns(_ACTIVE):
                d = await self._advance(row)
                if d is not None:
                    deadlines.append(d)
            return min(deadlines) if deadlines else None

    async def _advance(self, row: OtaCampaignRow) -> float | None:
        while True:
            now = self._clock()
            nodes = self._rows.ota_nodes(row.id)
            for n in nodes:
                if n.state in _OPEN and self._deadline(row, n) <= now:
                    self._rows.ota_set_node(row.id, n.endpoint, state="timed_out",
                                            reason=f"no report within {row.report_timeout_s:g}"
                                            " s")
                    log.warning("OTA campaign %d: ep=%s silent for %g s: failed", row.id,
                                n.endpoint, row.report_timeout_s)
            nodes = self._rows.ota_nodes(row.id)
            wave = [n for n in nodes if n.wave == row.wave]
            failed = sum(n.state in _FAILED for n in wave)
            if wave and failed / len(wave) > row.max_failure_ratio:
                await self._abort(row, f"wave {row.wave + 1}: {failed} of {len(wave)} nodes"
                                  f" failed ({failed / len(wave):.0%}, the maximum is"
                                  f" {row.max_failure_ratio:.0%})")
                return None
            if row.state != "running":
                return self._earliest(row, nodes)
            if all(n.state in _FINAL for n in wave):
                last = max(n.wave for n in nodes)
                if row.wave >= last:
                    self._rows.ota_set_campaign(row.id, state="completed", wave=row.wave,
                                                reason=None, now=now)
                    log.info("OTA campaign %d completed", row.id)
                    return None
                self._rows.ota_set_campaign(row.id, state="running", wave=row.wave + 1,
                                            reason=None, now=now)
                log.info("OTA campaign %d: wave %d starts", row.id, row.wave + 2)
                row = self.campaign(row.id)
                continue
            pending = [n for n in wave if n.state == "pending"]
            if not pending:
                return self._earliest(row, nodes)
            for n in pending:
                # stored first: after a crash the node is waited for, never offered twice
                self._rows.ota_set_node(row.id, n.endpoint, state="offered",
                                        offered=self._clock())
                try:
                    await self.delivery.offer(n.endpoint, row.image)
                except Exception as e:  # noqa: BLE001 - a delivery's fault fails the node only
                    self._rows.ota_set_node(row.id, n.endpoint, state="failed",
                                            heard=self._clock(), reason=f"offer: {e}")
                    log.warning("OTA campaign %d: offer to ep=%s failed: %s", row.id,
                                n.endpoint, e)
            row = self.campaign(row.id)

    def _earliest(self, row: OtaCampaignRow, nodes: Sequence[OtaNodeRow]) -> float | None:
        open_ = [self._deadline(row, n) for n in nodes if n.state in _OPEN]
        return min(open_) if open_ else None

    @staticmethod
    def _deadline(row: OtaCampaignRow, n: OtaNodeRow) -> float:
        return max(n.offered or 0.0, n.heard or 0.0) + row.report_timeout_s

    def _set(self, row: OtaCampaignRow, state: str, reason: str | None = None) -> None:
        self._rows.ota_set_campaign(row.id, state=state, wave=row.wave, reason=reason,
                                    now=self._clock())
        log.info("OTA campaign %d: %s%s", row.id, state, f" ({reason})" if reason else "")

    async def _abort(self, row: OtaCampaignRow, reason: str) -> None:
        self._set(row, "aborted", reason)
        for n in self._rows.ota_nodes(row.id):
            if n.state in _OPEN:
                try:
                    await self.delivery.cancel(n.endpoint, row.image)
                except Exception as e:  # noqa: BLE001 - the abort stands regardless
                    log.warning("OTA campaign %d: cancel to ep=%s failed: %s", row.id,
                                n.endpoint, e)

    # -- views ---------------------------------------------------------------------------

    def progress(self, cid: int) -> dict[str, Any]:
        """The campaign with per-wave counts and per-node states (JSON-ready; waves are
        numbered from 1)."""
        row = self.campaign(cid)
        nodes = self._rows.ota_nodes(cid)
        waves: list[dict[str, Any]] = []
        for w in range(max((n.wave for n in nodes), default=-1) + 1):
            members = [n for n in nodes if n.wave == w]
            counts = {s: sum(n.state == s for n in members) for s in NODE_STATES}
            failed = counts["failed"] + counts["timed_out"]
            status = ("done" if all(n.state in _FINAL for n in members)
                      else "waiting" if all(n.state == "pending" for n in members)
                      else "under way")
            waves.append({"wave": w + 1, "size": len(members), "status": status, **counts,
                          "failure_ratio": failed / len(members) if members else 0.0})
        out = summary(row)
        out["waves_progress"] = waves
        out["nodes"] = [{"endpoint": n.endpoint, "wave": n.wave + 1, "state": n.state,
                         "offered": n.offered, "heard": n.heard, "reason": n.reason,
                         "deadline": self._deadline(row, n) if n.state in _OPEN else None}
                        for n in nodes]
        return out


def summary(row: OtaCampaignRow) -> dict[str, Any]:
    """A campaign row as JSON (``wave`` numbered from 1)."""
    return {"id": row.id, "name": row.name, "image": row.image, "target": row.target,
            "waves": list(row.waves), "max_failure_ratio": row.max_failure_ratio,
            "report_timeout_s": row.report_timeout_s, "state": row.state,
            "wave": row.wave + 1, "reason": row.reason, "created": row.created,
            "updated": row.updated}

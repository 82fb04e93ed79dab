"""How a campaign reaches the nodes: the ``Delivery`` protocol.

The engine calls ``offer(endpoint, image_id)`` once per node (it returns once the
offer is under way, not when the node updated) and ``cancel`` for a node still updating
when its campaign is aborted. What the node then does comes back through
``CampaignEngine.report(endpoint, outcome, reason)``: ``updating`` (it took the image,
still alive), ``succeeded`` (it runs the new image, confirmed) or ``failed``. A node
that reports nothing within the campaign's ``report_timeout_s`` has failed.

``LwM2MDelivery`` is the daemon's: the LwM2M Firmware Update object (/5, Core section
E.6). The offer writes the Package URI (/5/0/1, the image served by ``package.py`` at
``/fw/<image id>``: pull), or, for an image of at most ``[ota] push_max_bytes``, writes
the image itself to Package (/5/0/0, opaque, Block1: push; the node stores each block as
it arrives); then the node is followed by reading /5/0 every
``poll_s``: state 1 Downloading is ``updating``; state 2 Downloaded (the node verified the
image and unpacked it into its free slot) is answered with Update (Execute /5/0/2); the
node then reboots into a test boot, and ``succeeded`` is /5/0/5 result 1 with the image's
version in /5/0/7 once it registered again (it confirms only after its self-test); any
other result (2 no room, 4 link lost, 5 integrity, 6 type, 7 URI, 8 failed: rolled back,
9 protocol) is ``failed`` with its meaning, except result 4 (the node gave up on a
dropped link): the Package URI is written again, up to ``MAX_RESUMES`` times, and the node
continues from its last stored block (``firmware/ota/fetch.py``). A node that cannot be reached is simply read
again later: the campaign's ``report_timeout_s`` decides when silence is a failure.
Without an engine (``engine`` None) a follow-up reports nowhere. ``UnavailableDelivery``
refuses every offer (a gateway without device management).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from ..errors import GatewayError
from ..lwm2m.codecs import CF_OPAQUE
from .errors import OtaServiceError
from .package import package_path

if TYPE_CHECKING:
    from ..dm.manager import DeviceManagement

__all__ = ["RESULTS", "Delivery", "DeliveryError", "LwM2MDelivery", "RecordingDelivery",
           "UnavailableDelivery"]

log = logging.getLogger("aiotkit.gateway.ota")

# /5/0/5 Update Result, LwM2M 1.1 Core section E.6 (resource 5)
RESULTS = {
    0: "initial value", 1: "firmware updated successfully",
    2: "not enough flash memory for the new package",
    3: "out of RAM during the download", 4: "connection lost during the download",
    5: "integrity check failure (signature, hash, key or security counter)",
    6: "unsupported package type", 7: "invalid URI",
    8: "firmware update failed (rolled back)", 9: "unsupported protocol",
    10: "firmware update cancelled",
}
_IDLE, _DOWNLOADING, _DOWNLOADED, _UPDATING = 0, 1, 2, 3  # /5/0/3 State
_LINK_LOST = 4  # /5/0/5: connection lost during the download
MAX_RESUMES = 5  # Package URI written again after a lost link before the node has failed


class DeliveryError(OtaServiceError):
    """An offer that could not be made: the node counts as failed, with this message."""

    def __init__(self, message: str) -> None:
        super().__init__(502, "delivery_failed", message)


class Delivery(Protocol):
    async def offer(self, endpoint: str, image_id: str) -> None: ...

    async def cancel(self, endpoint: str, image_id: str) -> None: ...


class UnavailableDelivery:
    """No delivery configured (an engine made without one): every offer fails (fails
    closed)."""

    async def offer(self, endpoint: str, image_id: str) -> None:
        raise DeliveryError("no delivery to nodes configured")

    async def cancel(self, endpoint: str, image_id: str) -> None:
        return None


class RecordingDelivery:
    """A delivery that only records (tests, simulations): ``offers`` and ``cancels`` in
    order; an endpoint in ``refuse`` makes its offer fail."""

    def __init__(self, refuse: frozenset[str] = frozenset()) -> None:
        self.offers: list[tuple[str, str]] = []
        self.cancels: list[tuple[str, str]] = []
        self.refuse = refuse

    async def offer(self, endpoint: str, image_id: str) -> None:
        if endpoint in self.refuse:
            raise DeliveryError(f"{endpoint} cannot be reached")
        self.offers.append((endpoint, image_id))

    async def cancel(self, endpoint: str, image_id: str) -> None:
        self.cancels.append((endpoint, image_id))

    def offered(self) -> list[str]:
        return [ep for ep, _ in self.offers]


Report = Callable[[str, str, str], bool]  # CampaignEngine.report(endpoint, outcome, reason)


class LwM2MDelivery:
    """Firmware Update over LwM2M /5 (module docstring) through device management.
    ``uri_base`` is the gateway's CoAP URI (``coap://HOST:PORT``); ``version_of`` gives
    an image's version text (``ImageStore``); ``report`` is set by ``OtaService`` to the
    campaign engine's."""

    def __init__(self, dm: DeviceManagement, uri_base: str,
                 version_of: Callable[[str], str | None], *, poll_s: float = 2.0,
                 timeout_s: float = 30.0,
                 type_of: Callable[[str], str | None] = lambda image_id: "app",
                 data_of: Callable[[str], bytes] | None = None, push_max: int = 0) -> None:
        self._dm = dm
        self._uri_base = uri_base.rstrip("/")
        self._version_of = version_of
        self._type_of = type_of
        self._data_of = data_of
        self.push_max = push_max
        self.poll_s = poll_s
        self.timeout_s = timeout_s
        self.report: Report | None = None
        # CampaignEngine.waiting: a node no campaign waits for any more (timed out,
        # its campaign aborted or completed) is no longer read
        self.wanted: Callable[[str], bool] | None = None
        self._follow: dict[str, asyncio.Task[None]] = {}

    def uri(self, image_id: str) -> str:
        return self._uri_base + package_path(image_id)

    async def offer(self, endpoint: str, image_id: str) -> None:
        await self._stop(endpoint)
        if self._type_of(image_id) == "model":
            slot = await self._model_slot(endpoint, image_id)
            watch = self._watch_model(endpoint, slot)
        else:
            data = self._data_of(image_id) if self._data_of and self.push_max else None
            if data is not None and len(data) <= self.push_max:
                watch = self._watch(endpoint, image_id, data)  # pushed by the follow-up
            else:
                try:
                    await self._dm.write(endpoint, "/5/0/1", self.uri(image_id),
                                         timeout=self.timeout_s)
                except GatewayError as e:
                    raise DeliveryError(f"Package URI write to {endpoint}: {e}") from None
                watch = self._watch(endpoint, image_id)
        self._follow[endpoint] = asyncio.create_task(watch, name=f"aiot-ota-{endpoint}")

    async def _model_slot(self, endpoint: str, image_id: str) -> int:
        # a model goes to a Software Management slot whose model neither decides nor
        # runs (/9/x/3; the node refuses a running one 4.05): the other slot then
        last: Exception | None = None
        for slot in (1, 0):
            try:
                await self._dm.write(endpoint, f"/9/{slot}/3", self.uri(image_id),
                                     timeout=self.timeout_s)
                return slot
            except GatewayError as e:
                last = e
        raise DeliveryError(f"Package URI write to {endpoint} /9: {last}")

    async def cancel(self, endpoint: str, image_id: str) -> None:
        await self._stop(endpoint)
        try:  # an empty Package URI cancels a download (Core E.6); best effort
            await self._dm.write(endpoint, "/5/0/1", "", timeout=self.timeout_s)
        except GatewayError as e:
            log.info("OTA: cancel on %s: %s", endpoint, e)

    async def shutdown(self) -> None:
        for ep in list(self._follow):
            await self._stop(ep)

    async def _stop(self, endpoint: str) -> None:
        t = self._follow.pop(endpoint, None)
        if t is not None and t is not asyncio.current_task():
            t.cancel()
            await asyncio.gather(t, return_exceptions=True)

    def _tell(self, endpoint: str, outcome: str, reason: str = "") -> None:
        if self.report is not None:
            self.report(endpoint, outcome, reason)

    async def _read(self, endpoint: str) -> tuple[int, int, str] | None:
        # /5/0: (state, result, package version), None while the node cannot answer
        try:
            r = await self._dm.read(endpoint, "/5/0", timeout=self.timeout_s)
        except GatewayError:
            return None
        try:
            v = r.values
            return (int(v["/5/0/3"]), int(v["/5/0/5"]), str(v.get("/5/0/7", "")))
        except (KeyError, TypeError, ValueError):
            return None

    async def _watch_model(self, endpoint: str, slot: int) -> None:
        # /9/slot: 1 download started, 3 delivered (verified) -> Install; 4 installed:
        # the model runs as the candidate (promotion is the model service's, by rule);
        # INITIAL with a result of 50 or more: failed, with the node's reason (16)
        path = f"/9/{slot}"
        installing = updating = False
        try:
            while True:
                await asyncio.sleep(self.poll_s * (0.75 + random.random() / 2))
                if self.wanted is not None and not self.wanted(endpoint):
                    return
                try:
                    v = (await self._dm.read(endpoint, path, timeout=self.timeout_s)).values
                    state, result = int(v[f"{path}/7"]), int(v[f"{path}/9"])
                except (GatewayError, KeyError, TypeError, ValueError):
                    continue
                if state in (1, 2, 3) and not updating:
                    updating = True
                    self._tell(endpoint, "updating")
                if state == 4 and installing:
                    self._tell(endpoint, "succeeded")
                    return
                if state == 3 and not installing:
                    try:
                        await self._dm.execute(endpoint, f"{path}/4", timeout=self.timeout_s)
                        installing = True
                    except GatewayError as e:
                        log.info("OTA: Install on %s: %s (read again)", endpoint, e)
                elif result >= 50:
                    self._tell(endpoint, "failed", f"{path} result {result}: "
                               + str(v.get(f"{path}/16", "")))
                    return
        finally:
            if self._follow.get(endpoint) is asyncio.current_task():
                del self._follow[endpoint]

    async def _watch(self, endpoint: str, image_id: str, push: bytes | None = None) -> None:
        version = self._version_of(image_id)
        updating = executed = False
        resumes = 0
        try:
            if push is not None:
                # push (Block1 to /5/0/0, each block stored by the node as it comes): the
                # transfer is the offer; a node that cannot take it has failed
                self._tell(endpoint, "updating")
                updating = True
                try:
                    await self._dm.write(endpoint, "/5/0/0", push, content_format=CF_OPAQUE,
                                         timeout=self.timeout_s + len(push) / 1024)
                except GatewayError as e:
                    self._tell(endpoint, "failed", f"push to /5/0/0: {e}")
                    return
            while True:
                # jittered: a wave's nodes are not all read in the same instant
                await asyncio.sleep(self.poll_s * (0.75 + random.random() / 2))
                if self.wanted is not None and not self.wanted(endpoint):
                    return
                seen = await self._read(endpoint)
                if seen is None:
                    continue
                state, result, running = seen
                if not executed:
                    if state in (_DOWNLOADING, _DOWNLOADED) and not updating:
                        updating = True
                        self._tell(endpoint, "updating")
                    if state == _DOWNLOADED:
                        try:
                            await self._dm.execute(endpoint, "/5/0/2", timeout=self.timeout_s)
                        except GatewayError as e:
                            log.info("OTA: Update on %s: %s (read again)", endpoint, e)
                            continue
                        executed = True
                    elif state == _IDLE and result == _LINK_LOST and resumes < MAX_RESUMES:
                        # the node gave up on a dropped link: the same URI again, and it
                        # continues from its last stored block
                        resumes += 1
                        log.info("OTA: %s lost the link during the download; resuming (%d)",
                                 endpoint, resumes)
                        try:
                            await self._dm.write(endpoint, "/5/0/1", self.uri(image_id),
                                                 timeout=self.timeout_s)
                        except GatewayError as e:
                            log.info("OTA: resume on %s: %s (read again)", endpoint, e)
                    elif state == _IDLE and result > 1:
                        self._tell(endpoint, "failed", f"result {result}: "
                                   + RESULTS.get(result, "unknown"))
                        return
                    continue
                if state == _IDLE and result == 1 and running == version:
                    self._tell(endpoint, "succeeded")
                    return
                if state == _IDLE and result > 1:
                    self._tell(endpoint, "failed", f"result {result}: "
                               + RESULTS.get(result, "unknown"))
                    return
        finally:
            if self._follow.get(endpoint) is asyncio.current_task():
                del self._follow[endpoint]

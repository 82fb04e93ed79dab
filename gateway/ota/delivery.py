"""How a campaign reaches the nodes: the ``Delivery`` protocol.

The engine calls ``offer(endpoint, image_id)`` once per node (it returns once the
offer is under way, not when the node updated) and ``cancel`` for a node still updating
when its campaign is aborted. What the node then does comes back through
``CampaignEngine.report(endpoint, outcome, reason)``: ``updating`` (it took the image,
still alive), ``succeeded`` (it runs the new image, confirmed) or ``failed``. A node
that reports nothing within the campaign's ``report_timeout_s`` has failed.

The LwM2M Firmware Update object (/5) delivery is not written yet (the node side is not
ready): ``UnavailableDelivery`` refuses every offer, so a campaign started on a real
gateway fails its canaries and aborts itself rather than pretending.
"""

from __future__ import annotations

from typing import Protocol

from .errors import OtaServiceError

__all__ = ["Delivery", "DeliveryError", "RecordingDelivery", "UnavailableDelivery"]


class DeliveryError(OtaServiceError):
    """An offer that could not be made: the node counts as failed, with this message."""

    def __init__(self, message: str) -> None:
        super().__init__(502, "delivery_failed", message)


class Delivery(Protocol):
    async def offer(self, endpoint: str, image_id: str) -> None: ...

    async def cancel(self, endpoint: str, image_id: str) -> None: ...


class UnavailableDelivery:
    """No delivery to nodes yet: every offer fails (fails closed)."""

    async def offer(self, endpoint: str, image_id: str) -> None:
        raise DeliveryError("no delivery to nodes: LwM2M /5 firmware update is not"
                            " implemented yet")

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

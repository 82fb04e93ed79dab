"""``OtaService``: the image store and the campaign engine of one gateway.

``Gateway`` makes it after the store (``start()`` resumes the campaigns the database
holds) and stops it before the store closes. The inventory campaigns select from is
``RegistryInventory`` unless a caller gives its own list of nodes (``NodeInfo``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from ..config import OtaConfig
from ..storage.api import Storage
from .campaigns import CampaignEngine, NodeInfo
from .delivery import Delivery
from .images import ImageStore

__all__ = ["OtaService", "RegistryInventory", "images_folder"]


def images_folder(config: OtaConfig, db: Path) -> Path:
    """``[ota] images_dir``, or ``<db>.ota-images`` next to the database."""
    return Path(config.images_dir) if config.images_dir else db.with_name(
        db.name + ".ota-images")


class RegistryInventory:
    """The registered endpoints, with the firmware version (/3/0/3) and model number
    (/3/0/1) they last reported, if they did; their board and tags are not known to
    the registry (a campaign then needs them named in ``target.endpoints``, or a list of
    nodes given with the campaign)."""

    def __init__(self, store: Storage) -> None:
        self._store = store

    def nodes(self) -> list[NodeInfo]:
        out = []
        for reg in self._store.registrations():
            if reg.state != "registered":
                continue
            latest = self._store.latest(reg.endpoint)

            def text(path: str, latest: dict = latest) -> str | None:  # type: ignore[type-arg]
                v = latest.get(path)
                return None if v is None else str(v.value)

            out.append(NodeInfo(reg.endpoint, firmware=text("/3/0/3"), model=text("/3/0/1")))
        return out


class OtaService:
    """Images and campaigns over ``store.ota``; ``await start()``, ``await shutdown()``."""

    def __init__(self, store: Storage, config: OtaConfig, db: Path, *,
                 delivery: Delivery | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.inventory = RegistryInventory(store)
        self.images = ImageStore(store.ota, images_folder(config, db), config.trust_file,
                                 max_bytes=config.max_image_bytes, clock=clock)
        self.campaigns = CampaignEngine(store.ota, delivery=delivery, clock=clock)

    async def start(self) -> None:
        await self.campaigns.start()

    async def shutdown(self) -> None:
        await self.campaigns.shutdown()
        stop = getattr(self.campaigns.delivery, "shutdown", None)
        if stop is not None:  # LwM2MDelivery: the nodes it still follows
            await stop()

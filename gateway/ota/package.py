"""Images served to nodes: ``GET /fw/<image id>`` with Block2 (RFC 7959), the Package URI
of the LwM2M Firmware Update object (/5/0/1) that ``LwM2MDelivery`` writes.

Every block is cut from the stored image on demand (no transfer state on the gateway), so
a node may resume at any block at any time, after a dropped link or a reboot: what
aiocoap's own Block2 cache cannot do (it forgets a transfer after MAX_TRANSMIT_WAIT and
then answers 4.08). Each answer carries the image's ETag (the first 8 bytes of its
SHA-256, which is also its id) so a node notices a changed image and starts again, and
the first block carries Size2 so a node refuses an image larger than its slot before it
stores anything. Only a node the gateway knows may fetch (an OSCORE-verified registered
endpoint, or any registered peer in NoSec mode); the bytes of the most recently served
images stay in memory (``max_cached``), the rest is read from the image store.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from ..errors import GatewayError

__all__ = ["Block", "PackageError", "Packages", "package_path"]

PATH = "fw"  # the resource: /fw/<image id>
_ID = re.compile(r"[0-9a-f]{64}\Z")
MAX_SZX = 6  # 1024-byte blocks at most (no BERT over UDP)


def package_path(image_id: str) -> str:
    """The Uri-Path of an image's Package URI: ``/fw/<image id>``."""
    return f"/{PATH}/{image_id}"


class PackageError(GatewayError):
    """No such image (``not_found``) or a block past its end (``out_of_range``)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Block:
    payload: bytes
    num: int
    more: bool
    szx: int
    size: int  # the whole image's length (Size2)
    etag: bytes


class Packages:
    """Block ``num`` of size ``16 << szx`` of a stored image (``folder/<id>.img``)."""

    def __init__(self, folder: Path, *, max_cached: int = 4) -> None:
        self.folder = folder
        self.max_cached = max_cached
        self._cache: OrderedDict[str, bytes] = OrderedDict()

    def data(self, image_id: str) -> bytes:
        """The whole image (``PackageError`` not_found)."""
        return self._bytes(image_id)

    def _bytes(self, image_id: str) -> bytes:
        data = self._cache.get(image_id)
        if data is not None:
            self._cache.move_to_end(image_id)
            return data
        if not _ID.match(image_id):
            raise PackageError("not_found", "no such image")
        try:
            data = (self.folder / f"{image_id}.img").read_bytes()
        except OSError:
            raise PackageError("not_found", "no such image") from None
        self._cache[image_id] = data
        while len(self._cache) > self.max_cached:
            self._cache.popitem(last=False)
        return data

    def block(self, image_id: str, num: int, szx: int) -> Block:
        data = self._bytes(image_id)
        szx = min(szx, MAX_SZX)
        size = 16 << szx
        start = num * size
        if start >= len(data) and not (start == 0 and not data):
            raise PackageError("out_of_range", f"block {num} is past the image's end")
        end = min(start + size, len(data))
        return Block(data[start:end], num, end < len(data), szx, len(data),
                     bytes.fromhex(image_id[:16]))

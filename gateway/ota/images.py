"""The image store: verified OTA images, content-addressed.

``upload`` verifies first (``aiotkit.ota.image.verify``: structure, TLVs, hash, every
signature against the trust set of ``[ota] trust_file``, the board and payload type the
uploader named, the board's slot size less MCUboot's trailer) and keeps nothing of an
image that fails: the refusal carries the verifier's reason. A verified image is written
to ``images_dir/<sha256>.img`` through a temporary file and ``os.replace``, then its row
is inserted; a second upload of the same bytes finds the row and changes nothing. The
trust file is read at each upload, so a key revoked there stops new uploads at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path

from aiotkit.boards.paths import boards_dir
from aiotkit.ota import image as ota_image
from aiotkit.ota.errors import ImageBuildError, ImageRejected, KeyFileError
from aiotkit.ota.keys import KeySet, load_keyset, write_atomic

from ..storage.api import OtaImageRow, OtaStorage
from .errors import OtaServiceError

__all__ = ["TRAILER_ALIGN", "ImageStore", "slot_size"]

TRAILER_ALIGN = 4  # the flash write alignment the trailer is sized for (as 'aiot ota sign')


def slot_size(board: str, folder: Path | None = None) -> int:
    """The board's ``slot_a`` size from ``boards/BOARD.json``; ``OtaServiceError`` (400
    ``unknown_board``) if the board is not shipped or names no slot."""
    try:
        ota_image.check_board(board)
    except ImageBuildError:
        raise OtaServiceError(400, "unknown_board", f"{board!r} is not a board name"
                              ) from None
    path = (folder or boards_dir()) / f"{board}.json"
    try:
        size = json.loads(path.read_text())["flash"]["regions"]["slot_a"]["size"]
    except (OSError, ValueError, KeyError, TypeError):
        raise OtaServiceError(400, "unknown_board", f"board {board!r} is not shipped or"
                              " has no slot_a (boards/NAME.json)") from None
    if not isinstance(size, int) or size <= 0:
        raise OtaServiceError(400, "unknown_board", f"board {board!r}: bad slot_a size")
    return size


class ImageStore:
    """Verified images: files in ``folder``, rows in ``rows``."""

    def __init__(self, rows: OtaStorage, folder: Path, trust_file: str, *,
                 max_bytes: int, clock: Callable[[], float] = time.time,
                 boards: Path | None = None) -> None:
        self._rows = rows
        self.folder = folder
        self._trust_file = trust_file
        self.max_bytes = max_bytes
        self._clock = clock
        self._boards = boards

    def trusted(self) -> KeySet:
        """The trust set as the file now says; 503 ``ota_unavailable`` without one."""
        if not self._trust_file:
            raise OtaServiceError(503, "ota_unavailable", "no trust set: set [ota]"
                                  " trust_file (aiot ota trust add ...)")
        try:
            return load_keyset(Path(self._trust_file))
        except (KeyFileError, OSError) as e:
            raise OtaServiceError(503, "ota_unavailable", f"trust file: {e}") from None

    def path(self, image_id: str) -> Path:
        return self.folder / f"{image_id}.img"

    def get(self, image_id: str) -> OtaImageRow | None:
        return self._rows.ota_image(image_id)

    def list(self) -> list[OtaImageRow]:
        return self._rows.ota_images()

    async def upload(self, data: bytes, *, board: str,
                     payload_type: str = "app") -> tuple[OtaImageRow, bool]:
        """Verify and keep ``data``; (its row, True if it is new). ``OtaServiceError``:
        422 ``image_rejected`` with the verifier's ``reason`` (nothing kept), 413, 400."""
        if len(data) > self.max_bytes:
            raise OtaServiceError(413, "too_large", f"{len(data)} bytes: the largest image"
                                  f" is {self.max_bytes} ([ota] max_image_bytes)")
        if payload_type not in ota_image.PAYLOAD_TYPES:
            raise OtaServiceError(400, "bad_query", "payload_type is one of "
                                  + ", ".join(ota_image.PAYLOAD_TYPES))
        slot = slot_size(board, self._boards)
        trusted = self.trusted()
        image_id = hashlib.sha256(data).hexdigest()
        known = self._rows.ota_image(image_id)
        # verification hashes the whole image: off the event loop
        try:
            v = await asyncio.to_thread(
                ota_image.verify, data, trusted, floor=0, slot_size=slot, board=board,
                payload_type=payload_type,
                trailer_size=ota_image.mcuboot_trailer_size(TRAILER_ALIGN),
                any_feature_spec=True)  # a model's feature spec: each node checks its own
        except ImageRejected as e:
            raise OtaServiceError(422, "image_rejected", str(e), reason=e.reason) from None
        if known is not None and self.path(image_id).is_file():
            return known, False
        await asyncio.to_thread(self._write, image_id, data)
        row = OtaImageRow(image_id, str(v.version), v.payload_type, v.board,
                          v.security_counter, tuple(k.hex() for k in v.signed_by), v.size,
                          self._clock())
        if not self._rows.ota_put_image(row):  # the same bytes uploaded meanwhile
            found = self._rows.ota_image(image_id)
            assert found is not None
            return found, False
        return row, True

    def _write(self, image_id: str, data: bytes) -> None:
        self.folder.mkdir(mode=0o750, parents=True, exist_ok=True)
        write_atomic(self.path(image_id), data, mode=0o640)

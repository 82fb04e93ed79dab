"""LwM2M paths and object links as the codecs see them: parsing, formatting, checking.

A path names the root (``/``), an object ``/O``, an object instance ``/O/I``, a resource
``/O/I/R`` or a resource instance ``/O/I/R/RI``; every id is 0..65534 written without
leading zeros (65535 is reserved, LwM2M TS Core §7.1). Codecs take the path a payload
answers as text (``"/3/0"``) or as a tuple of ids (``(3, 0)``); both mean the same.

An object link (Objlnk) is ``"O:I"``; unlike path ids its two halves may be 65535, and
``"65535:65535"`` is the null link (TS Core Appendix C).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from ..errors import BadRequest

__all__ = [
    "MAX_ID",
    "Path",
    "PathError",
    "format_objlnk",
    "format_path",
    "is_under",
    "parse_objlnk",
    "parse_path",
]

MAX_ID = 65534  # 65535 is reserved (LwM2M TS Core §7.1)
_MAX_OBJLNK_ID = 65535  # TS Core Appendix C: 65535:65535 is the null link
_PATH = re.compile(r"(?:/(?:0|[1-9][0-9]{0,4})){0,4}")
_OBJLNK = re.compile(r"(0|[1-9][0-9]{0,4}):(0|[1-9][0-9]{0,4})")

Path = tuple[int, ...]


class PathError(BadRequest):
    """A path or an object link that LwM2M does not allow (CoAP 4.00)."""


def parse_path(path: str | Sequence[int]) -> Path:
    """``"/3/0/1"`` or ``(3, 0, 1)`` -> ``(3, 0, 1)``; ``"/"``, ``""`` and ``()`` are the root."""
    if isinstance(path, str):
        text = "" if path == "/" else path
        if not _PATH.fullmatch(text):
            raise PathError(f"{_short(path)} is not an LwM2M path")
        ids = tuple(int(part) for part in text.split("/")[1:])
    else:
        try:
            ids = tuple(path)
        except TypeError as e:
            raise PathError(f"{_short(path)} is not an LwM2M path") from e
        if len(ids) > 4 or not all(type(i) is int for i in ids):
            raise PathError(f"{_short(path)} is not an LwM2M path")
    for i in ids:
        if not 0 <= i <= MAX_ID:
            raise PathError(f"id {i} in {_short(path)} is outside 0..{MAX_ID}")
    return ids


def format_path(ids: Sequence[int]) -> str:
    """``(3, 0, 1)`` -> ``"/3/0/1"``; the root is ``"/"``."""
    return "/" + "/".join(str(i) for i in ids) if ids else "/"


def is_under(path: Sequence[int], base: Sequence[int]) -> bool:
    """True when ``path`` is ``base`` or lies below it."""
    return len(path) >= len(base) and tuple(path[: len(base)]) == tuple(base)


def parse_objlnk(text: str) -> tuple[int, int]:
    """``"3:0"`` -> ``(3, 0)``; each half 0..65535."""
    m = _OBJLNK.fullmatch(text) if isinstance(text, str) else None
    if not m or int(m[1]) > _MAX_OBJLNK_ID or int(m[2]) > _MAX_OBJLNK_ID:
        raise PathError(f"{_short(text)} is not an object link (O:I, each 0..65535)")
    return int(m[1]), int(m[2])


def format_objlnk(oid: int, iid: int) -> str:
    """``(3, 0)`` -> ``"3:0"``."""
    return f"{oid}:{iid}"


def _short(thing: object) -> str:
    text = repr(thing)
    return text if len(text) <= 60 else text[:57] + "..."

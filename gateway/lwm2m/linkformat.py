"""CoRE link format (RFC 6690) as LwM2M uses it: a client's object links in Register and
Update, and the answer to Discover.

``parse_link_format`` checks a whole list strictly and gives its target URIs (a
Register with a malformed list is refused 4.00). ``links`` reads a list loosely as
``Link`` (target, attributes) pairs, for lists already checked or shown to a person.
On top of that, what device management needs to know from a registration's object
links (TS Core §6.2.1): which objects and instances it names (under an alternate root
path ``</lwm2m>;rt="oma.lwm2m"`` when it has one), the content formats it lists
(``</>;ct="112 11542"``) and the lowest free instance id of an object.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from ..coap.aio import ContentFormat
from ..errors import BadRequest, GatewayError
from .paths import parse_path

__all__ = [
    "CF_LINK_FORMAT",
    "Link",
    "content_formats",
    "free_instance",
    "links",
    "parse_link_format",
    "registered_instances",
]

CF_LINK_FORMAT = int(ContentFormat.LINKFORMAT)  # 40, RFC 6690 §7.3

# RFC 6690 link-value, read strictly: <uri> then ;param or ;param=token or ;param="quoted"
_STRICT = re.compile(
    r"""<(?P<uri>/[^<>"\s,]*)>"""
    r"""(?:;[!#$%&'*+\-.^_`|~0-9A-Za-z]+(?:=(?:"(?:[^"\\]|\\.)*"|[^;,"\s]*))?)*"""
)
_LOOSE = re.compile(r'<([^>]*)>((?:;[^;,"]+(?:="[^"]*"|=[^;,]*)?)*)')
_ROOT_TYPE = 'rt="oma.lwm2m"'  # TS Core §6.2.1.1: the alternate root path's link


class Link(NamedTuple):
    """One link-value: its target and its attributes as written (``dim=2``)."""

    target: str
    attrs: tuple[str, ...]


def parse_link_format(text: str) -> list[str]:
    """The target URIs of a CoRE link-format list (``</1/0>,</3/0>;ver=1.1``);
    ``BadRequest`` (4.00) names where it is malformed."""
    uris: list[str] = []
    pos, end = 0, len(text)
    while True:
        m = _STRICT.match(text, pos)
        if m is None:
            raise BadRequest(f"malformed link-format at character {pos}")
        uris.append(m.group("uri"))
        pos = m.end()
        if pos == end:
            return uris
        if text[pos] != ",":
            raise BadRequest(f"malformed link-format at character {pos}")
        pos += 1


def links(text: str) -> list[Link]:
    """Every link-value of ``text``, read loosely (what does not parse is skipped)."""
    return [Link(m.group(1), tuple(a for a in m.group(2).split(";") if a))
            for m in _LOOSE.finditer(text)]


def registered_instances(object_links: str) -> set[tuple[int, ...]]:
    """The objects ``(O,)`` and object instances ``(O, I)`` an object-link list names,
    under its alternate root path when it has one."""
    found = links(object_links)
    root = next((t.rstrip("/") for t, attrs in found if _ROOT_TYPE in attrs), "")
    out: set[tuple[int, ...]] = set()
    for target, _attrs in found:
        if root and not target.startswith(root + "/"):
            continue
        try:
            ids = parse_path(target[len(root):])
        except GatewayError:
            continue
        if ids:
            out.add(ids[:1])
            out.add(ids[:2])
    return out


def content_formats(object_links: str) -> set[int]:
    """The content formats the root link lists (``</>;ct="112 11542"``), if any."""
    for target, attrs in links(object_links):
        if target.rstrip("/") != "":
            continue
        for attr in attrs:
            name, _, value = attr.partition("=")
            if name == "ct":
                return {int(x) for x in value.strip('"').split() if x.isdigit()}
    return set()


def free_instance(object_links: str, obj: int) -> int:
    """The lowest instance id of object ``obj`` the list does not name."""
    taken = {ids[1] for ids in registered_instances(object_links)
             if len(ids) == 2 and ids[0] == obj}
    iid = 0
    while iid in taken:
        iid += 1
    return iid

"""LwM2M object definitions loaded from OMA DDF XML files (schema ``LWM2M-v1_1.xsd``).

A DDF file holds ``<LWM2M>`` with one or more ``<Object>``: ``<Name>``, ``<ObjectID>``,
``<ObjectURN>``, ``<MultipleInstances>`` (Single/Multiple), ``<Mandatory>``
(Mandatory/Optional) and ``<Resources>``, a list of ``<Item ID="...">`` each with
``<Name>``, ``<Operations>`` (R, W, RW, E or empty), ``<MultipleInstances>``,
``<Mandatory>``, ``<Type>``, ``<RangeEnumeration>``, ``<Units>``, ``<Description>``.

The codecs need the ``Type`` of a resource: TLV and plain text carry untyped values, and
``ResourceType`` names the nine DDF types plus ``none`` (an executable resource has no
value). The gateway ships the OMA core objects, the IPSO sensors it uses and aiotkit's
own objects in ``gateway/objects/`` (provenance in its README).

Any file that is not such a document raises ``DDFError`` with the file and the element
(``3.xml: Object[1]/Resources/Item[ID=4]/Type: 'Strng' is not a DDF type``). Files with a
DTD or entity declarations are refused outright: a definition never needs one, and
refusing them rules out entity expansion and external entity tricks.
"""

from __future__ import annotations

import functools
import importlib.resources
import os
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..errors import ConfigError
from .paths import MAX_ID

__all__ = [
    "DDFError",
    "ObjectDef",
    "ResourceDef",
    "ResourceType",
    "load_dir",
    "load_file",
    "load_shipped",
    "parse",
    "resource_def",
]

ResourceType = Literal[
    "string", "integer", "unsigned", "float", "boolean", "opaque", "time", "objlnk",
    "corelnk", "none",
]

# LWM2M-v1_1.xsd enumerations, compared case-insensitively after stripping whitespace.
_TYPES: dict[str, ResourceType] = {
    "string": "string",
    "integer": "integer",
    "unsigned integer": "unsigned",
    "float": "float",
    "boolean": "boolean",
    "opaque": "opaque",
    "time": "time",
    "objlnk": "objlnk",
    "corelnk": "corelnk",
    "": "none",
    "none": "none",
}
_OPERATIONS = ("", "R", "W", "RW", "E")
_MULTIPLE = {"single": False, "multiple": True}
_MANDATORY = {"optional": False, "mandatory": True}
_MAX_FILE_BYTES = 4 * 1024 * 1024  # the largest OMA DDF is well under 1 MB


class DDFError(ConfigError):
    """A DDF file cannot be used; the message names the file and the element."""


@dataclass(frozen=True, slots=True)
class ResourceDef:
    """One ``<Item>``: a resource of an object."""

    id: int
    name: str
    operations: str  # "", "R", "W", "RW" or "E"
    multiple: bool
    mandatory: bool
    type: ResourceType
    range: str = ""
    units: str = ""
    description: str = ""

    @property
    def readable(self) -> bool:
        return "R" in self.operations

    @property
    def writable(self) -> bool:
        return "W" in self.operations

    @property
    def executable(self) -> bool:
        return self.operations == "E"


@dataclass(frozen=True, slots=True)
class ObjectDef:
    """One ``<Object>``: its identity and its resources by id."""

    id: int
    name: str
    urn: str
    multiple: bool
    mandatory: bool
    resources: Mapping[int, ResourceDef] = field(default_factory=dict)
    version: str = "1.0"
    lwm2m_version: str = "1.0"
    description: str = ""
    source: str = ""


def parse(data: bytes, source: str = "<bytes>") -> list[ObjectDef]:
    """Parse one DDF document; ``source`` names it in errors."""
    if len(data) > _MAX_FILE_BYTES:
        raise DDFError(f"{source}: larger than {_MAX_FILE_BYTES} bytes")
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        raise DDFError(f"{source}: DTD or entity declarations are not allowed in a DDF file")
    try:
        root = ET.fromstring(data)
    except ET.ParseError as e:
        raise DDFError(f"{source}: not well-formed XML ({e})") from e
    if root.tag != "LWM2M":
        raise DDFError(f"{source}: root element is <{root.tag}>, not <LWM2M>")
    objects = root.findall("Object")
    if not objects:
        raise DDFError(f"{source}: LWM2M: no <Object> element")
    return [_object(source, f"Object[{n}]", el) for n, el in enumerate(objects, 1)]


def load_file(path: str | os.PathLike[str]) -> list[ObjectDef]:
    """Parse the DDF file at ``path``."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise DDFError(f"{p}: cannot read ({e.strerror or e})") from e
    return parse(data, str(p))


def load_dir(path: str | os.PathLike[str]) -> dict[int, ObjectDef]:
    """Every ``*.xml`` file in ``path`` -> ``{object_id: ObjectDef}``; ids must be unique."""
    p = Path(path)
    if not p.is_dir():
        raise DDFError(f"{p}: not a directory")
    return _collect((f.name, f.read_bytes, str(f)) for f in sorted(p.glob("*.xml")))


def load_shipped() -> dict[int, ObjectDef]:
    """The definitions in ``gateway/objects/`` (OMA core, IPSO sensors, aiotkit objects)."""
    return dict(_shipped())


def resource_def(objects: Mapping[int, ObjectDef] | None,
                 path: Sequence[int]) -> ResourceDef | None:
    """The definition of the resource ``path`` (``/O/I/R`` or deeper) names, if known."""
    if not objects or len(path) < 3:
        return None
    obj = objects.get(path[0])
    return None if obj is None else obj.resources.get(path[2])


@functools.lru_cache(maxsize=1)
def _shipped() -> tuple[tuple[int, ObjectDef], ...]:
    folder = importlib.resources.files("aiotkit.gateway") / "objects"
    files = sorted((f for f in folder.iterdir() if f.name.endswith(".xml")),
                   key=lambda f: f.name)
    found = _collect((f.name, f.read_bytes, f"gateway/objects/{f.name}") for f in files)
    return tuple(sorted(found.items()))


def _collect(files: Iterable[tuple[str, Callable[[], bytes], str]]) -> dict[int, ObjectDef]:
    out: dict[int, ObjectDef] = {}
    for _name, read, source in files:
        try:
            data = read()
        except OSError as e:
            raise DDFError(f"{source}: cannot read ({e.strerror or e})") from e
        for obj in parse(data, source):
            if obj.id in out:
                raise DDFError(f"{source}: object {obj.id} is already defined in "
                               f"{out[obj.id].source}")
            out[obj.id] = obj
    return out


def _object(source: str, where: str, el: ET.Element) -> ObjectDef:
    oid = _int_id(source, f"{where}/ObjectID", _text(source, where, el, "ObjectID"))
    resources_el = el.find("Resources")
    if resources_el is None:
        raise DDFError(f"{source}: {where}: missing <Resources>")
    resources: dict[int, ResourceDef] = {}
    for n, item in enumerate(resources_el.findall("Item"), 1):
        res = _item(source, f"{where}/Resources/Item[{n}]", item)
        if res.id in resources:
            raise DDFError(f"{source}: {where}/Resources/Item[ID={res.id}]: "
                           "duplicate resource id")
        resources[res.id] = res
    return ObjectDef(
        id=oid,
        name=_text(source, where, el, "Name", required=True, nonempty=True),
        urn=_text(source, where, el, "ObjectURN", required=False),
        multiple=_choice(source, where, el, "MultipleInstances", _MULTIPLE),
        mandatory=_choice(source, where, el, "Mandatory", _MANDATORY),
        resources=resources,
        version=_text(source, where, el, "ObjectVersion", required=False) or "1.0",
        lwm2m_version=_text(source, where, el, "LWM2MVersion", required=False) or "1.0",
        description=_text(source, where, el, "Description1", required=False),
        source=source,
    )


def _item(source: str, where: str, el: ET.Element) -> ResourceDef:
    raw_id = el.get("ID")
    if raw_id is None:
        raise DDFError(f"{source}: {where}: missing attribute ID")
    rid = _int_id(source, f"{where}@ID", raw_id)
    where = where.rsplit("[", 1)[0] + f"[ID={rid}]"
    ops = _text(source, where, el, "Operations").upper()
    if ops not in _OPERATIONS:
        raise DDFError(f"{source}: {where}/Operations: {ops!r} is not one of R, W, RW, E "
                       "or empty")
    raw_type = _text(source, where, el, "Type")
    rtype = _TYPES.get(" ".join(raw_type.lower().split()))
    if rtype is None:
        raise DDFError(f"{source}: {where}/Type: {raw_type!r} is not a DDF type")
    return ResourceDef(
        id=rid,
        name=_text(source, where, el, "Name", nonempty=True),
        operations=ops,
        multiple=_choice(source, where, el, "MultipleInstances", _MULTIPLE),
        mandatory=_choice(source, where, el, "Mandatory", _MANDATORY),
        type=rtype,
        range=_text(source, where, el, "RangeEnumeration", required=False),
        units=_text(source, where, el, "Units", required=False),
        description=_text(source, where, el, "Description", required=False),
    )


def _text(source: str, where: str, el: ET.Element, tag: str, *, required: bool = True,
          nonempty: bool = False) -> str:
    child = el.find(tag)
    if child is None:
        if required:
            raise DDFError(f"{source}: {where}: missing <{tag}>")
        return ""
    if len(child):
        raise DDFError(f"{source}: {where}/{tag}: unexpected child <{child[0].tag}>")
    text = (child.text or "").strip()
    if nonempty and not text:
        raise DDFError(f"{source}: {where}/{tag}: empty")
    return text


def _choice(source: str, where: str, el: ET.Element, tag: str,
            choices: dict[str, bool]) -> bool:
    text = _text(source, where, el, tag)
    if text.lower() not in choices:
        allowed = " or ".join(c.capitalize() for c in choices)
        raise DDFError(f"{source}: {where}/{tag}: {text!r} is not {allowed}")
    return choices[text.lower()]


def _int_id(source: str, where: str, text: str) -> int:
    text = text.strip()
    if not text.isascii() or not text.isdigit() or int(text) > MAX_ID:
        raise DDFError(f"{source}: {where}: {text!r} is not an id 0..{MAX_ID}")
    return int(text)

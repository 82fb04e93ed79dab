"""DDF loading: every shipped definition, aiotkit's objects, and malformed files."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from aiotkit.gateway.errors import ConfigError
from aiotkit.gateway.lwm2m import ddf
from aiotkit.gateway.lwm2m.ddf import DDFError, load_dir, load_file, load_shipped, parse

ROOT = Path(__file__).resolve().parents[2]
OBJECTS_DIR = ROOT / "gateway" / "objects"
REGISTRY = ROOT.parent / "shared" / "data" / "lwm2m-registry"
OMA_FILES = ["0.xml", "1.xml", "2.xml", "3.xml", "4.xml", "5.xml", "9.xml", "21.xml", "3303.xml",
             "3313.xml"]


def test_every_shipped_definition_loads():
    objects = load_shipped()
    assert sorted(objects) == [0, 1, 2, 3, 4, 5, 9, 16, 21, 3303, 3313, 33000, 33001, 33002]
    from_dir = load_dir(OBJECTS_DIR)
    assert {i: o.resources for i, o in from_dir.items()} == \
        {i: o.resources for i, o in objects.items()}
    for oid, obj in objects.items():
        assert obj.id == oid and obj.name and obj.resources
        assert obj.source.endswith(f"{oid}.xml")


def test_core_object_facts_match_the_registry():
    objects = load_shipped()
    device = objects[3]
    assert (device.name, device.multiple, device.mandatory) == ("Device", False, True)
    assert device.urn == "urn:oma:lwm2m:oma:3:1.2" and device.version == "1.2"
    assert device.resources[13].type == "time" and device.resources[13].operations == "RW"
    assert device.resources[4].executable and device.resources[4].type == "none"
    assert device.resources[6].multiple and device.resources[6].type == "integer"
    assert objects[5].resources[0].type == "opaque" and objects[5].resources[0].writable
    assert objects[0].resources[17].type == "objlnk"
    assert objects[1].resources[11].type == "unsigned"
    assert objects[3313].resources[5702].type == "float"
    assert objects[3303].resources[5700].readable
    assert ddf.resource_def(objects, (3, 0, 13, 0)) is device.resources[13]
    assert ddf.resource_def(objects, (3, 0)) is None
    assert ddf.resource_def(objects, (9999, 0, 1)) is None
    assert ddf.resource_def(None, (3, 0, 13)) is None


def test_aiotkit_objects_are_as_documented():
    objects = load_shipped()
    window, features, decision = objects[33000], objects[33001], objects[33002]
    assert window.name == "aiotkit Vibration Window" and window.urn == "urn:oma:lwm2m:x:33000"
    # 12, 13: the flash log; 14: Send refused by the server (reports by Notify only)
    assert sorted(window.resources) == list(range(15))
    assert {r.id for r in window.resources.values() if r.type == "float"} == {4, 5}
    assert window.resources[14].type == "boolean"
    assert all(r.type == "integer" for i, r in window.resources.items() if i not in (4, 5, 14))
    assert window.resources[3].units == "Hz" and window.resources[4].units == "g"
    assert "16 skipped" in window.resources[6].description
    assert features.name == "aiotkit Window Features"
    assert sorted(features.resources) == list(range(32))
    assert all(r.type == "float" for r in features.resources.values())
    types = {i: r.type for i, r in decision.resources.items()}
    assert types == {0: "integer", 1: "integer", 2: "string", 3: "float", 4: "integer",
                     5: "boolean", 6: "integer", 7: "opaque", 8: "opaque", 9: "opaque",
                     10: "integer", 11: "integer", 12: "integer",
                     # the candidate model's (firmware/ota/models.py)
                     13: "integer", 14: "opaque", 15: "integer", 16: "integer",
                     17: "boolean", 18: "integer", 19: "integer", 20: "integer"}
    assert decision.resources[3].range == "0..1"
    for obj in (window, features, decision):
        assert all(r.operations == "R" and not r.multiple for r in obj.resources.values())


@pytest.mark.parametrize("name", OMA_FILES)
def test_oma_files_keep_their_licence_header(name):
    text = (OBJECTS_DIR / name).read_text(encoding="utf-8")
    head = text[: text.index("<LWM2M")]
    assert "Open Mobile Alliance" in head
    assert "Redistribution and use in source and binary forms" in head


def test_readme_records_provenance_and_package_data_ships_the_files():
    readme = (OBJECTS_DIR / "README.md").read_text(encoding="utf-8")
    assert "OpenMobileAlliance/lwm2m-registry" in readme and "b62ffc2" in readme
    for name in OMA_FILES:
        assert f"`{name}`" in readme
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    data = config["tool"]["setuptools"]["package-data"]["aiotkit.gateway"]
    assert "objects/*.xml" in data and "objects/*.md" in data


@pytest.mark.skipif(not REGISTRY.is_dir(), reason="no copy of the OMA registry here")
def test_every_registry_ddf_in_the_shared_data_loads():
    files = sorted(REGISTRY.glob("[0-9]*.xml"))
    assert len(files) > 20
    for f in files:
        (obj,) = load_file(f)
        assert f.name == f"{obj.id}.xml"


# -- malformed files ----------------------------------------------------------------------

GOOD_ITEM = ("<Item ID=\"0\"><Name>Value</Name><Operations>R</Operations>"
             "<MultipleInstances>Single</MultipleInstances><Mandatory>Mandatory</Mandatory>"
             "<Type>Integer</Type><RangeEnumeration/><Units/><Description>d</Description>"
             "</Item>")


def _doc(item: str = GOOD_ITEM, *, oid: str = "40000", multiple: str = "Single",
         extra: str = "") -> bytes:
    return (f"<?xml version=\"1.0\"?><LWM2M><Object ObjectType=\"MODefinition\">"
            f"<Name>Test</Name><Description1/><ObjectID>{oid}</ObjectID>"
            f"<ObjectURN>urn:oma:lwm2m:x:{oid}</ObjectURN>"
            f"<MultipleInstances>{multiple}</MultipleInstances><Mandatory>Optional</Mandatory>"
            f"<Resources>{item}</Resources>{extra}</Object></LWM2M>").encode()


def test_a_minimal_definition_parses():
    (obj,) = parse(_doc(), "t.xml")
    assert obj.id == 40000 and obj.resources[0].type == "integer"
    assert obj.version == "1.0" and obj.source == "t.xml"


@pytest.mark.parametrize("data, where", [
    (b"<LWM2M><Object>", "not well-formed XML"),
    (b"", "not well-formed XML"),
    (b"<units/>", "root element is <units>"),
    (b"<LWM2M/>", "no <Object>"),
    (_doc(oid="65535"), "Object[1]/ObjectID"),
    (_doc(oid="3x"), "Object[1]/ObjectID"),
    (_doc(multiple="Many"), "Object[1]/MultipleInstances"),
    (_doc(GOOD_ITEM.replace("Integer", "Int")), "Object[1]/Resources/Item[ID=0]/Type"),
    (_doc(GOOD_ITEM.replace(">R<", ">RX<")), "Item[ID=0]/Operations"),
    (_doc(GOOD_ITEM.replace(' ID="0"', "")), "Object[1]/Resources/Item[1]: missing attribute"),
    (_doc(GOOD_ITEM.replace(' ID="0"', ' ID="-1"')), "Item[1]@ID"),
    (_doc(GOOD_ITEM.replace("<Name>Value</Name>", "")), "Item[ID=0]: missing <Name>"),
    (_doc(GOOD_ITEM.replace("<Name>Value</Name>", "<Name> </Name>")), "Item[ID=0]/Name"),
    (_doc(GOOD_ITEM.replace("Single", "Singular")), "Item[ID=0]/MultipleInstances"),
    (_doc(GOOD_ITEM.replace("<Type>Integer</Type>", "<Type><b/></Type>")),
     "Item[ID=0]/Type: unexpected child"),
    (_doc(GOOD_ITEM + GOOD_ITEM), "Item[ID=0]: duplicate resource id"),
    (_doc().replace(b"<Resources>", b"<Resourcez>").replace(b"</Resources>", b"</Resourcez>"),
     "Object[1]: missing <Resources>"),
    # entity expansion ("billion laughs") and external entities (XXE) never get parsed
    ((b'<?xml version="1.0"?><!DOCTYPE LWM2M [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;">]>'
      b"<LWM2M>&b;</LWM2M>"), "DTD or entity"),
    (b'<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><LWM2M>&e;</LWM2M>',
     "DTD or entity"),
])
def test_malformed_definitions_name_file_and_element(data, where):
    with pytest.raises(DDFError) as info:
        parse(data, "objects/bad.xml")
    message = str(info.value)
    assert message.startswith("objects/bad.xml: ") and where in message
    assert isinstance(info.value, ConfigError)


def test_load_dir_refuses_an_object_defined_twice(tmp_path):
    (tmp_path / "a.xml").write_bytes(_doc())
    (tmp_path / "b.xml").write_bytes(_doc())
    (tmp_path / "notes.txt").write_text("ignored")
    with pytest.raises(DDFError, match=r"b\.xml: object 40000 is already defined in .*a\.xml"):
        load_dir(tmp_path)
    (tmp_path / "b.xml").write_bytes(_doc(oid="40001"))
    assert sorted(load_dir(tmp_path)) == [40000, 40001]


def test_load_errors_name_the_path(tmp_path):
    with pytest.raises(DDFError, match="not a directory"):
        load_dir(tmp_path / "missing")
    with pytest.raises(DDFError, match=r"nothing\.xml: cannot read"):
        load_file(tmp_path / "nothing.xml")
    (tmp_path / "broken.xml").write_bytes(b"<LWM2M>")
    with pytest.raises(DDFError, match=r"broken\.xml: not well-formed XML"):
        load_dir(tmp_path)

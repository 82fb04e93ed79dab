"""Models as their own signed artifacts (payload type ``model``): the image carries the
model card's identity (AIOT_MODEL_ID 0xa172: SHA-256 of the .tflite + NAME@VERSION) and
the feature-spec version it was trained on (AIOT_FEATURE_SPEC 0xa173), both protected.
The issue's named fault: a model for another feature spec is refused
(``wrong-feature-spec``); so are a model without its identity, an identity naming another
.tflite, and model TLVs smuggled into an app image. ``aiot ota sign-model`` signs a
shipped model from its card, and ``aiot ota verify --payload-type model`` checks it."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from aiotkit.boards.paths import shipped_models
from aiotkit.ota import image
from aiotkit.ota.errors import ImageBuildError
from aiotkit.ota.image import TLV, ImageVersion, ModelId
from otakit import BOARD, COUNTER, check, keyset, make, reason, signer, tlvs
from test_ota_cli import PASS, aiot, work  # noqa: F401 (the fixture)

TFLITE = b"TFL3 not really a model" * 10
ID = ModelId("bearing-fault", "1.0.0", hashlib.sha256(TFLITE).digest())
TRUSTED = keyset("ed-a")


def model_image(spec: int = 1, ident: ModelId = ID, payload: bytes = TFLITE) -> bytes:
    return make("ed-a", payload=payload, payload_type="model", model=ident,
                feature_spec=spec)


def test_model_carries_its_identity_and_feature_spec():
    v = check(model_image(), TRUSTED, payload_type="model", feature_spec=1)
    assert v.model == ID and v.feature_spec == 1 and bytes(v.payload) == TFLITE
    (mid,) = tlvs(model_image(), "AIOT_MODEL_ID")
    (fs,) = tlvs(model_image(), "AIOT_FEATURE_SPEC")
    assert mid.protected and fs.protected and (mid.type, fs.type) == (0xA172, 0xA173)
    assert model_image()[mid.offset:mid.offset + mid.length] == \
        ID.sha256 + b"bearing-fault@1.0.0"


def test_model_for_another_feature_spec_is_refused():
    img = model_image(spec=2)
    assert reason(img, TRUSTED, payload_type="model", feature_spec=1) == "wrong-feature-spec"
    assert check(img, TRUSTED, payload_type="model", feature_spec=2).feature_spec == 2


def test_model_without_its_identity_is_refused():
    img = make("ed-a", payload=TFLITE, payload_type="model")  # as plain 'aiot ota sign'
    assert reason(img, TRUSTED, payload_type="model", feature_spec=1) == "missing-tlv"


def test_identity_naming_another_tflite_is_refused():
    with pytest.raises(ImageBuildError):
        model_image(payload=TFLITE + b"x")
    # assembled by hand, signed: the signature is good, the identity is not the payload's
    other = ModelId("bearing-fault", "1.0.0", hashlib.sha256(b"other").digest())
    prot = [(TLV["SEC_CNT"], COUNTER.to_bytes(4, "little")),
            (TLV["AIOT_PAYLOAD_TYPE"], b"model"), (TLV["AIOT_BOARD"], BOARD.encode()),
            (TLV["AIOT_MODEL_ID"], other.encode()),
            (TLV["AIOT_FEATURE_SPEC"], (1).to_bytes(4, "little"))]
    img = _assemble(TFLITE, prot)
    assert reason(img, TRUSTED, payload_type="model", feature_spec=1) == "bad-model-id"
    prot[3] = (TLV["AIOT_MODEL_ID"], ID.sha256 + b"no-at-sign")
    img = _assemble(TFLITE, prot)
    assert reason(img, TRUSTED, payload_type="model", feature_spec=1) == "bad-model-id"


def test_model_tlvs_in_an_app_image_are_refused():
    prot = [(TLV["SEC_CNT"], COUNTER.to_bytes(4, "little")),
            (TLV["AIOT_PAYLOAD_TYPE"], b"app"), (TLV["AIOT_BOARD"], BOARD.encode()),
            (TLV["AIOT_FEATURE_SPEC"], (1).to_bytes(4, "little"))]
    assert reason(_assemble(b"app", prot), TRUSTED) == "unexpected-tlv"
    with pytest.raises(ImageBuildError):
        make("ed-a", model=ID, feature_spec=1)  # an app


def test_verifying_a_model_needs_the_devices_feature_spec():
    with pytest.raises(ValueError, match="feature_spec"):
        check(model_image(), TRUSTED, payload_type="model")


def test_model_image_as_an_app_is_wrong_payload_type():
    assert reason(model_image(), TRUSTED) == "wrong-payload-type"


def _assemble(payload: bytes, prot: list[tuple[int, bytes]]) -> bytes:
    area = image.tlv_area(image.TLV_PROT_INFO_MAGIC, prot)
    hdr = image.Header(image.IMAGE_MAGIC, 0, 0x200, len(area), len(payload), 0,
                       ImageVersion(1, 0, 0), 0).pack()
    body = hdr + b"\xff" * (0x200 - len(hdr)) + payload + area
    digest = hashlib.sha256(body).digest()
    s = signer("ed-a")
    return body + image.tlv_area(image.TLV_INFO_MAGIC, [
        (TLV["SHA256"], digest), (TLV["KEYHASH"], s.key_id),
        (TLV["ED25519"], s.sign_digest(digest))])


# --- the command -----------------------------------------------------------------------


def test_sign_model_cli_and_verify(work):  # noqa: F811 (the fixture)
    model, _ = shipped_models()
    card = json.loads(model.with_name("card.json").read_text())
    out = work / "model.img"
    r = aiot("sign-model", str(model), str(out), "-k", str(work / "old.pem"),
             "--board", "unix-sim", "--security-counter", "3",
             env={"AIOT_OTA_PASSPHRASE": PASS})
    assert r.returncode == 0, r.stderr
    assert f"{card['name']}@{card['version']}" in r.stdout and "feature spec 1" in r.stdout
    base = ["verify", str(out), "--trust", str(work / "trust.json"), "--board", "unix-sim",
            "--payload-type", "model"]
    r = aiot(*base, "--feature-spec", "1", "--json")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["model"] == {"name": card["name"], "version": card["version"],
                            "sha256": card["model"]["sha256"], "feature_spec": 1}
    assert got["version"] == "1.0.0+0"
    r = aiot(*base, "--feature-spec", "2")
    assert r.returncode == 1 and "wrong-feature-spec" in r.stderr
    r = aiot(*base)
    assert r.returncode == 2 and "--feature-spec" in r.stderr
    r = aiot("inspect", str(out), "--json")
    values = {t["name"]: t.get("value") for t in json.loads(r.stdout)["tlvs"]}
    assert values["AIOT_FEATURE_SPEC"] == 1
    assert values["AIOT_MODEL_ID"].startswith(f"{card['name']}@{card['version']} sha256 ")


def test_sign_model_refuses_a_card_of_another_model(work, tmp_path):  # noqa: F811
    fault, anomaly = shipped_models()
    shutil.copy(fault, tmp_path / "model.tflite")
    shutil.copy(anomaly.with_name("card.json"), tmp_path / "card.json")
    r = aiot("sign-model", str(tmp_path / "model.tflite"), str(work / "m.img"), "-k",
             str(work / "old.pem"), "--board", "unix-sim", "--security-counter", "3",
             env={"AIOT_OTA_PASSPHRASE": PASS})
    assert r.returncode == 2 and "describes another .tflite" in r.stderr
    assert not (work / "m.img").exists()
    r = aiot("sign-model", str(work / "app.bin"), str(work / "m.img"), "-k",
             str(work / "old.pem"), "--board", "unix-sim", "--security-counter", "3",
             env={"AIOT_OTA_PASSPHRASE": PASS})
    assert r.returncode == 2 and "card" in r.stderr


def test_model_image_passes_imgtool_verify(work):  # noqa: F811
    imgtool = Path(shutil.which("imgtool") or Path(__import__("sys").executable).parent
                   / "imgtool")
    if not imgtool.exists():
        pytest.skip("imgtool missing")
    model, _ = shipped_models()
    out = work / "model.img"
    r = aiot("sign-model", str(model), str(out), "-k", str(work / "old.pem"),
             "--board", "unix-sim", "--security-counter", "3",
             env={"AIOT_OTA_PASSPHRASE": PASS})
    assert r.returncode == 0, r.stderr
    import subprocess

    r2 = subprocess.run([str(imgtool), "verify", "-k", str(work / "old.pub.pem"), str(out)],
                        capture_output=True, text=True, timeout=60, check=False)
    assert r2.returncode == 0, r2.stdout + r2.stderr

"""The Package URI the gateway serves (``GET /fw/<image id>``, gateway/ota/package.py):
aiocoap's own block-wise client (a peer we did not write) reassembles exactly the stored
image; any block can be asked for at any time, long after the first (a node resuming
after a dropped link; aiocoap's Block2 cache would have answered 4.08); every block
carries the image's ETag and the first its Size2; a peer that is not a registered node
gets nothing; an unknown image is 4.04 and a block past the end 4.00."""

from __future__ import annotations

import hashlib

import aiocoap
from aiocoap.numbers.codes import Code
from aiotkit.ota import image as ota_image
from aiotkit.ota import keys as ota_keys
from test_lwm2m import ask, register, req

IMAGE_PAYLOAD = bytes((i * 31 + 7) & 0xFF for i in range(20_000))


def signed(signer: ota_keys.Signer) -> bytes:
    return ota_image.build(IMAGE_PAYLOAD, [signer], version=ota_image.ImageVersion.parse("1.0.0"),
                           security_counter=1, payload_type="app", board="unix-sim")


async def stored(gw, tmp_path) -> tuple[str, bytes]:
    signer = ota_keys.generate("ed25519")
    ota_keys.save_keyset(tmp_path / "trust.json", ota_keys.KeySet.of(("ci", signer.public)))
    data = signed(signer)
    row, _ = await gw.ota.images.upload(data, board="unix-sim")
    return row.id, data


async def block(peer: aiocoap.Context, uri: str, num: int, szx: int = 6) -> aiocoap.Message:
    # one block as a node asks for it (aiocoap's client would fetch the rest itself)
    m = req(Code.GET, uri)
    m.opt.block2 = (num, False, szx)
    return await peer.request(m, handle_blockwise=False).response


async def test_a_registered_node_gets_the_image_block_by_block(gateway_config, running_gateway,
                                                              coap_peer, tmp_path):
    cfg = gateway_config('[ota]\ntrust_file = "trust.json"\n')
    async with running_gateway(cfg) as gw, coap_peer() as peer:
        image_id, data = await stored(gw, tmp_path)
        assert (await register(peer, cfg.coap_uri)).code == Code.CREATED
        uri = f"{cfg.coap_uri}/fw/{image_id}"
        whole = await ask(peer, req(Code.GET, uri))  # aiocoap fetches every block itself
        assert whole.code == Code.CONTENT and whole.payload == data
        first = await block(peer, uri, 0)
        assert first.opt.etag == bytes.fromhex(image_id[:16]) and first.opt.size2 == len(data)
        assert first.opt.block2.more and len(first.payload) == 1024
        last_num = (len(data) - 1) // 1024
        # a late block, alone and out of order: served from the image, not a cache
        late = await block(peer, uri, last_num)
        assert late.code == Code.CONTENT and not late.opt.block2.more
        assert late.payload == data[last_num * 1024:] and late.opt.etag == first.opt.etag
        small = await block(peer, uri, 3, szx=4)  # 256-byte blocks
        assert small.payload == data[768:1024]
        past = await block(peer, uri, last_num + 1)
        assert past.code == Code.BAD_REQUEST
        unknown = await ask(peer, req(Code.GET, f"{cfg.coap_uri}/fw/{'0' * 64}"))
        assert unknown.code == Code.NOT_FOUND
        assert hashlib.sha256(data).hexdigest() == image_id


async def test_a_peer_that_is_not_a_registered_node_gets_nothing(gateway_config,
                                                                running_gateway, coap_peer,
                                                                tmp_path):
    cfg = gateway_config('[ota]\ntrust_file = "trust.json"\n')
    async with running_gateway(cfg) as gw, coap_peer() as peer:
        image_id, _ = await stored(gw, tmp_path)
        resp = await ask(peer, req(Code.GET, f"{cfg.coap_uri}/fw/{image_id}"))
        assert resp.code == Code.NOT_FOUND and not resp.opt.size2

"""Rollups (gateway/analytics/rollups.py): 1-minute and 1-hour buckets by the gateway's
receive time, per node and feature, with the inference statistics; stored and published
when a bucket closes; through a real gateway and a real Mosquitto."""

from __future__ import annotations

import asyncio
import json

import aiocoap
import aiomqtt
import cbor2
import pytest
from aiocoap.numbers.codes import Code
from aiotkit.gateway.analytics.rollups import SCORE_SAMPLE, Rollups, percentile
from aiotkit.gateway.analytics.window import Window, parse_window
from aiotkit.gateway.lwm2m.senml import decode_cbor

SENML_CBOR = 112
T0 = 1_700_000_040.0  # a minute boundary (and 1_699_999_200 is the hour's start)


def window(rms: float, label: str | None = None, score: int | None = None,
           conf: float | None = None, anomalous: bool | None = None) -> Window:
    return Window(features={1: rms}, readings={"/3313/0/5702": rms * 2}, label=label,
                  score=score, confidence=conf, anomalous=anomalous)


def test_a_minute_bucket_closes_with_min_max_mean_count_and_inference_statistics():
    r = Rollups(["mean", "rms"])
    assert r.add("n1", T0 + 1, window(0.1, "normal", 10, 0.9, False)) == []
    assert r.add("n1", T0 + 30, window(0.3, "ball", 30, 0.7, True)) == []
    assert r.add("n1", T0 + 59.9, window(0.2, "normal", 20, 0.8, False)) == []
    assert r.close_due(T0 + 59.99) == []  # not yet
    closed = r.close_due(T0 + 60)
    assert [c["period"] for c in closed] == ["1m"]  # the hour is still open
    c = closed[0]
    assert (c["endpoint"], c["start"], c["end"], c["sends"]) == ("n1", T0, T0 + 60, 3)
    assert c["features"]["/33001/0/1"] == {"name": "rms", "min": 0.1, "max": 0.3,
                                           "mean": pytest.approx(0.2), "count": 3}
    assert c["features"]["/3313/0/5702"]["max"] == 0.6
    inf = c["inference"]
    assert inf["classes"] == {"ball": 1, "normal": 2} and inf["windows"] == 3
    assert inf["mean_confidence"] == pytest.approx(0.8) and inf["anomalous"] == 1
    assert (inf["score_p50"], inf["score_p90"], inf["score_p99"]) == (20, 30, 30)


def test_a_send_in_the_next_bucket_closes_the_open_one_and_the_hour_closes_too():
    r = Rollups()
    hour = 1_699_999_200.0
    r.add("n1", hour + 3599, window(1.0))
    closed = r.add("n1", hour + 3600.5, window(2.0))
    assert sorted((c["period"], c["start"]) for c in closed) == [
        ("1h", hour), ("1m", hour + 3540)]
    assert all(c["features"]["/33001/0/1"]["count"] == 1 for c in closed)


def test_clock_going_back_keeps_counting_in_the_open_bucket_never_reopens_a_closed_one():
    r = Rollups()
    r.add("n1", T0 + 10, window(1.0))
    assert r.add("n1", T0 - 5, window(2.0)) == []  # wall clock stepped back 15 s
    (c,) = [x for x in r.close_due(T0 + 60) if x["period"] == "1m"]
    assert c["start"] == T0 and c["features"]["/33001/0/1"]["count"] == 2


def test_score_percentiles_stay_bounded_in_memory_for_a_busy_hour():
    r = Rollups()
    for i in range(5 * SCORE_SAMPLE):
        r.add("n1", T0 + i * 0.01, Window(score=i))
    b = r._open[("n1", "1m")]
    assert len(b.scores) == SCORE_SAMPLE and b.scores_seen == 5 * SCORE_SAMPLE
    (c,) = [x for x in r.close_due(T0 + 3600) if x["period"] == "1m"]
    p50 = c["inference"]["score_p50"]
    assert 0.4 * 5 * SCORE_SAMPLE < p50 < 0.6 * 5 * SCORE_SAMPLE  # a fair sample


def test_nearest_rank_percentile():
    assert percentile([1, 2, 3, 4], 50) == 2
    assert percentile([1, 2, 3, 4], 99) == 4
    assert percentile([7], 1) == 7


def test_window_parser_ignores_foreign_and_malformed_values():
    recs = decode_cbor(cbor2.dumps([
        {-2: "/33001/0/", 0: "1", 2: 0.5}, {0: "40", 2: 1.0}, {0: "2", 3: "text"},
        {-2: "/33002/0/", 0: "2", 3: "ball"}, {0: "4", 4: True}, {0: "5", 4: True},
        {-2: "/3/0/", 0: "0", 3: "acme"}]))
    w = parse_window(recs)
    assert w is not None
    assert w.features == {1: 0.5} and w.label == "ball"
    assert w.score is None and w.anomalous is True  # a Boolean is no score
    assert parse_window(decode_cbor(cbor2.dumps([{0: "/3/0/0", 3: "acme"}]))) is None


def _send(seq: int, rms: float, label: str) -> bytes:
    return cbor2.dumps([
        {-2: "/33001/0/", 0: "1", 2: rms},
        {-2: "/33002/0/", 0: "0", 2: seq}, {0: "2", 3: label}, {0: "3", 2: 0.75},
        {0: "4", 2: 100 + seq}, {0: "5", 4: False}])


async def test_closed_buckets_are_stored_and_published_on_the_rollup_topic(
        mosquitto, gateway_config, running_gateway, clock):
    clock.now = T0 + 5
    cfg = gateway_config(f'[mqtt]\nenabled = true\nhost = "{mosquitto.host}"\n'
                         f"port = {mosquitto.port}\n")
    async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier="sub-roll") as sub:
        await sub.subscribe("#", qos=1)
        async with running_gateway(cfg, clock=clock) as gw:
            ctx = await aiocoap.Context.create_client_context(transports=["udp6"])
            try:
                async def ask(path, payload=b"", cf=None):
                    msg = aiocoap.Message(code=Code.POST, uri=f"{cfg.coap_uri}{path}",
                                          payload=payload)
                    if cf is not None:
                        msg.opt.content_format = cf
                    return await ctx.request(msg).response

                await ask("/rd?ep=node-1&lt=600", b"</33001/0>", 40)
                for i, (rms, label) in enumerate([(0.1, "normal"), (0.3, "ball"),
                                                  (0.2, "normal")]):
                    clock.advance(10)
                    assert (await ask("/dp", _send(i, rms, label), SENML_CBOR)).code \
                        == Code.CHANGED
            finally:
                await ctx.shutdown()
            assert gw.analytics is not None
            clock.now = T0 + 60
            gw.analytics.tick(clock.now)  # the tick task would do it within tick_s
            rows = gw.analytics.tables.rollups("node-1", "1m")
            assert len(rows) == 1 and rows[0]["start"] == T0
            assert rows[0]["features"]["/33001/0/1"]["count"] == 3
            assert rows[0]["inference"]["classes"] == {"ball": 1, "normal": 2}
            async with asyncio.timeout(10):
                async for msg in sub.messages:
                    if str(msg.topic).endswith("node-1/rollup/1m"):
                        assert isinstance(msg.payload, bytes)
                        assert json.loads(msg.payload) == rows[0]
                        break
            assert gw.analytics.tables.rollups("node-1", "1h") == []  # still open


def test_old_buckets_are_pruned_by_the_configured_retention(tmp_path):
    from aiotkit.gateway.storage import SqliteStorage

    with SqliteStorage.open(tmp_path / "g.db") as store:
        t = store.analytics
        t.put_rollups([("n1", "1m", T0 + 60 * i, {"i": i}) for i in range(10)])
        assert t.prune_rollups("1m", T0 + 60 * 7) == 7
        assert [r["i"] for r in t.rollups("n1", "1m")] == [7, 8, 9]
        assert [r["i"] for r in t.rollups("n1", "1m", limit=2)] == [8, 9]


def test_a_tick_writes_closed_buckets_in_chunks_serving_the_loop_between(tmp_path,
                                                                        gateway_config):
    # closing 1,000 nodes' buckets was one 0.15 s block of the event loop every minute
    from aiotkit.gateway.analytics import engine as engine_mod
    from aiotkit.gateway.analytics.engine import Analytics
    from aiotkit.gateway.storage import SqliteStorage

    with SqliteStorage.open(tmp_path / "g.db") as store:
        an = Analytics(gateway_config(), store, clock=lambda: T0)
        for n in range(600):
            an.rollups.add(f"n{n:03d}", T0 + 1, window(0.5, "normal", 100))
        written = []
        for _ in an._tick_steps(T0 + 3600 * 2):  # closes every minute and hour bucket
            written.append(sum(len(store.analytics.rollups(f"n{n:03d}", p))
                               for n in range(600) for p in ("1m", "1h")))
        chunk = engine_mod.WRITE_CHUNK
        assert written[-1] == 1200 and len(written) == -(-1200 // chunk)
        assert all(b - a <= chunk for a, b in zip([0, *written], written, strict=False))

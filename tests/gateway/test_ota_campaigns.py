"""The OTA campaign engine (gateway/ota/campaigns.py) on a real SQLite file, a fake clock
and a delivery that only records: waves, the failure threshold that aborts a campaign
by itself (a failing canary wave, silent canaries), pause / resume / abort, and a
restart in the middle of a campaign that resumes its state and its timers."""

from __future__ import annotations

import pytest
from aiotkit.gateway.ota import CampaignEngine, NodeInfo, OtaServiceError, RecordingDelivery
from aiotkit.gateway.ota.campaigns import Target, parse_waves, plan_waves, select
from aiotkit.gateway.storage import OtaImageRow, SqliteStorage

IMAGE = "ab" * 32
T = 600.0  # report_timeout_s


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, s: float) -> None:
        self.now += s


def fleet(n: int, board: str = "unix-sim", **kw) -> list[NodeInfo]:
    return [NodeInfo(f"n{i:02d}", board=board, **kw) for i in range(n)]


@pytest.fixture
def store(tmp_path):
    s = SqliteStorage.open(tmp_path / "gw.db")
    s.ota.ota_put_image(OtaImageRow(IMAGE, "1.2.3+0", "app", "unix-sim", 7, ("k1",), 1000,
                                    1.0))
    yield s
    s.close()


def engine(store, clock, delivery=None) -> tuple[CampaignEngine, RecordingDelivery]:
    d = delivery or RecordingDelivery()
    return CampaignEngine(store.ota, delivery=d, clock=clock), d


def make(e: CampaignEngine, nodes, waves=("2", "50%"), ratio=0.0, **kw) -> int:
    return e.create(name="c", image=IMAGE, board="unix-sim", target=kw.pop("target", Target()),
                    waves=list(waves), max_failure_ratio=ratio, report_timeout_s=T,
                    nodes=nodes)


def states(e: CampaignEngine, cid: int) -> dict[str, str]:
    return {n["endpoint"]: n["state"] for n in e.progress(cid)["nodes"]}


def test_waves_parse_and_plan():
    assert parse_waves(["2", "50%"]) == [(2, False), (50, True), (100, True)]
    assert parse_waves(["10%", "100%"]) == [(10, True), (100, True)]
    assert plan_waves(parse_waves(["2", "50%"]), 10) == [2, 3, 5]
    assert plan_waves(parse_waves(["10%"]), 3) == [1, 2]  # a canary is at least one node
    assert plan_waves(parse_waves(["5", "50%"]), 3) == [3]  # empty waves are dropped
    for bad in ([], ["0"], ["2", "3"], ["2", "50%", "40%"], ["101%"], ["x"], [True]):
        with pytest.raises(OtaServiceError) as e:
            parse_waves(bad)
        assert e.value.kind == "bad_value", bad


def test_target_selection_by_board_version_tag_and_names():
    nodes = [NodeInfo("a", "unix-sim", "1.0", "m1", ("lab",)),
             NodeInfo("b", "unix-sim", "1.1", "m1", ()),
             NodeInfo("c", "rpi-pico-w", "1.0", "m1", ("lab",)),
             NodeInfo("d", None, "1.0")]
    assert select(nodes, Target(), "unix-sim") == ["a", "b"]  # the image's board
    assert select(nodes, Target(firmware="1.0"), "unix-sim") == ["a"]
    assert select(nodes, Target(tag="lab"), "unix-sim") == ["a"]
    assert select(nodes, Target(model="m2"), "unix-sim") == []
    # an unknown board only when named; a known other board never
    assert select(nodes, Target(endpoints=("c", "d")), "unix-sim") == ["d"]


async def test_a_campaign_runs_its_waves_in_order_and_completes(store):
    clock = Clock()
    e, d = engine(store, clock)
    cid = make(e, fleet(10))
    assert e.campaign(cid).state == "draft" and d.offers == []
    await e.start_campaign(cid)
    assert d.offered() == ["n00", "n01"]  # the canaries only
    assert {s for ep, s in states(e, cid).items() if ep not in ("n00", "n01")} == {"pending"}
    e.report("n00", "updating")
    e.report("n00", "succeeded")
    await e.step()
    assert d.offered() == ["n00", "n01"]  # wave 2 waits for every canary
    e.report("n01", "succeeded")
    await e.step()
    assert d.offered()[2:] == ["n02", "n03", "n04"] and e.campaign(cid).wave == 1
    for ep in ("n02", "n03", "n04"):
        e.report(ep, "succeeded")
    await e.step()
    assert d.offered()[5:] == ["n05", "n06", "n07", "n08", "n09"]
    for ep in d.offered()[5:]:
        e.report(ep, "succeeded")
    await e.step()
    p = e.progress(cid)
    assert (p["state"], p["reason"]) == ("completed", None)
    assert [(w["wave"], w["size"], w["succeeded"], w["status"]) for w in p["waves_progress"]] \
        == [(1, 2, 2, "done"), (2, 3, 3, "done"), (3, 5, 5, "done")]
    assert len(d.offers) == 10 and {i for _, i in d.offers} == {IMAGE}
    assert e.report("n00", "succeeded") is False  # nothing waits for it any more


async def test_a_failing_canary_wave_aborts_before_wave_2(store):
    clock = Clock()
    e, d = engine(store, clock)
    cid = make(e, fleet(10), waves=("2", "50%"), ratio=0.4)
    await e.start_campaign(cid)
    e.report("n00", "succeeded")
    e.report("n01", "failed", "boot loop, rolled back")
    await e.step()
    p = e.progress(cid)
    assert p["state"] == "aborted"
    assert p["reason"] == "wave 1: 1 of 2 nodes failed (50%, the maximum is 40%)"
    assert d.offered() == ["n00", "n01"]  # wave 2 never started
    assert p["waves_progress"][1]["pending"] == 3 and p["waves_progress"][1]["status"] == \
        "waiting"
    assert states(e, cid)["n01"] == "failed"
    assert p["nodes"][1]["reason"] == "boot loop, rolled back"
    await e.step()
    assert d.offered() == ["n00", "n01"]  # and never will


async def test_the_threshold_trips_as_soon_as_it_cannot_be_met(store):
    """Three canaries, at most a third may fail: the second failure aborts at once, and the
    canary still updating is cancelled."""
    clock = Clock()
    e, d = engine(store, clock)
    cid = make(e, fleet(6), waves=("3",), ratio=0.34)
    await e.start_campaign(cid)
    e.report("n00", "failed")
    await e.step()
    assert e.campaign(cid).state == "running"
    e.report("n01", "updating")
    e.report("n02", "failed")
    await e.step()
    assert e.campaign(cid).state == "aborted"
    assert d.cancels == [("n01", IMAGE)]


async def test_silent_canaries_count_as_failures_after_the_report_timeout(store):
    clock = Clock()
    e, d = engine(store, clock)
    cid = make(e, fleet(10), waves=("2", "50%"), ratio=0.0)
    await e.start_campaign(cid)
    clock.advance(100)
    e.report("n00", "updating")  # alive: its deadline moves on
    clock.advance(T - 100 - 1)
    assert await e.step() == pytest.approx(clock.now + 1)  # n01's deadline is next
    assert e.campaign(cid).state == "running"
    clock.advance(1)
    await e.step()
    p = e.progress(cid)
    assert p["state"] == "aborted" and p["reason"].startswith("wave 1: 1 of 2 nodes failed")
    assert states(e, cid) == {**{f"n{i:02d}": "pending" for i in range(2, 10)},
                              "n00": "updating", "n01": "timed_out"}
    assert p["nodes"][1]["reason"] == "no report within 600 s"
    assert d.offered() == ["n00", "n01"]


async def test_silent_canaries_within_the_ratio_let_the_next_wave_start(store):
    clock = Clock()
    e, d = engine(store, clock)
    cid = make(e, fleet(4), waves=("2",), ratio=0.5)
    await e.start_campaign(cid)
    e.report("n00", "succeeded")
    clock.advance(T)
    await e.step()
    assert states(e, cid)["n01"] == "timed_out"
    assert d.offered() == ["n00", "n01", "n02", "n03"]


async def test_an_offer_the_delivery_refuses_fails_the_node(store):
    clock = Clock()
    e, _ = engine(store, clock, RecordingDelivery(refuse=frozenset({"n01"})))
    cid = make(e, fleet(4), waves=("2",), ratio=0.0)
    await e.start_campaign(cid)
    p = e.progress(cid)
    assert p["state"] == "aborted" and p["nodes"][1]["reason"] == "offer: n01 cannot be reached"


async def test_pause_resume_and_abort_by_the_operator(store):
    clock = Clock()
    e, d = engine(store, clock)
    cid = make(e, fleet(4), waves=("1",), ratio=0.0)
    with pytest.raises(OtaServiceError) as err:
        await e.pause(cid)
    assert (err.value.status, err.value.kind) == (409, "wrong_state")
    await e.start_campaign(cid)
    await e.pause(cid)
    e.report("n00", "succeeded")  # reports still count while paused
    await e.step()
    assert d.offered() == ["n00"] and e.campaign(cid).state == "paused"
    await e.resume(cid)
    assert d.offered() == ["n00", "n01", "n02", "n03"]
    await e.abort(cid, "wrong image")
    p = e.progress(cid)
    assert (p["state"], p["reason"]) == ("aborted", "wrong image")
    assert sorted(d.cancels) == [(ep, IMAGE) for ep in ("n01", "n02", "n03")]
    for op in (e.resume, e.pause, e.abort, e.start_campaign):
        with pytest.raises(OtaServiceError):
            await op(cid)
    assert e.report("n01", "succeeded") is False  # an aborted campaign takes no reports


async def test_a_paused_campaign_still_aborts_when_silent_nodes_trip_the_threshold(store):
    clock = Clock()
    e, _ = engine(store, clock)
    cid = make(e, fleet(4), waves=("2",), ratio=0.0)
    await e.start_campaign(cid)
    await e.pause(cid)
    clock.advance(T)
    await e.step()
    assert e.campaign(cid).state == "aborted"


async def test_a_node_in_an_active_campaign_is_not_taken_by_another(store):
    clock = Clock()
    e, _ = engine(store, clock)
    first = make(e, fleet(2), waves=("1",))
    second = make(e, fleet(3), waves=("1",))
    await e.start_campaign(first)
    with pytest.raises(OtaServiceError) as err:
        await e.start_campaign(second)
    assert err.value.kind == "node_busy" and e.campaign(second).state == "draft"


async def test_no_target_bad_ratio_bad_timeout_are_refused(store):
    e, _ = engine(store, Clock())
    with pytest.raises(OtaServiceError) as err:
        make(e, fleet(3, board="rpi-pico-w"))
    assert err.value.kind == "no_targets"
    for kw in ({"max_failure_ratio": 1.0}, {"max_failure_ratio": -0.1},
               {"report_timeout_s": 0}, {"name": ""}):
        args = {"name": "c", "image": IMAGE, "board": "unix-sim", "target": Target(),
                "waves": ["1"], "max_failure_ratio": 0.0, "report_timeout_s": T,
                "nodes": fleet(2)}
        args.update(kw)
        with pytest.raises(OtaServiceError):
            e.create(**args)
    assert e.campaigns() == []


async def test_a_restart_mid_campaign_resumes_its_wave_and_its_timers(tmp_path):
    """The gateway stops while the canaries are out: after the restart nothing is offered
    twice, a report counts, and a silent canary times out at the time measured from its
    stored offer, not from the restart."""
    clock = Clock()
    path = tmp_path / "gw.db"
    with SqliteStorage.open(path) as store:
        store.ota.ota_put_image(OtaImageRow(IMAGE, "1", "app", "unix-sim", 1, (), 10, 1.0))
        e, d = engine(store, clock)
        cid = make(e, fleet(6), waves=("2",), ratio=0.5)
        await e.start_campaign(cid)
        assert d.offered() == ["n00", "n01"]
        clock.advance(100)
        e.report("n00", "updating")
    clock.advance(400)  # down for 400 s
    with SqliteStorage.open(path) as store:
        e, d = engine(store, clock)
        await e.start()
        try:
            assert d.offers == []  # nothing offered twice
            assert states(e, cid)["n01"] == "offered"
            clock.advance(T - 500 - 1)  # n01 was offered T - 1 s ago
            await e.step()
            assert states(e, cid)["n01"] == "offered"
            clock.advance(1)
            await e.step()
            assert states(e, cid)["n01"] == "timed_out"  # half the wave: within 0.5
            assert e.campaign(cid).state == "running" and d.offers == []
            e.report("n00", "succeeded")
            await e.step()
            assert d.offered() == ["n02", "n03", "n04", "n05"]  # wave 2
        finally:
            await e.shutdown()
    with SqliteStorage.open(path) as store:
        e, d = engine(store, clock)
        assert e.campaign(cid).wave == 1
        await e.step()  # the wave's nodes were offered before: not again
        assert d.offers == []


def test_a_version_6_file_migrates_with_empty_ota_tables(tmp_path):
    from aiotkit.gateway.storage import schema
    from schemakit import file_at_version

    path = tmp_path / "gw.db"
    file_at_version(path, 6)
    with SqliteStorage.open(path) as store:
        assert store.pragmas()["user_version"] == schema.SCHEMA_VERSION
        assert store.ota.ota_images() == [] and store.ota.ota_campaigns() == []

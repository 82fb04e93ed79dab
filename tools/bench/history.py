"""``aiot bench history``: what keeping the database's history bounded costs
(``[gateway] history_s`` / ``history_max_sends``, ``SqliteStorage.prune_history``).

A store is filled with ``--sends`` Sends of 6 readings from 100 nodes (the shape of a
simulated node's report), and its file size gives the bytes a Send takes on disk. Then,
at that steady size, rounds interleave ingest and pruning as the daemon does: 1,000 new
Sends committed in one batch (the baseline), then the oldest 1,000 pruned in one call
(the daemon's chunk; the event loop is blocked for that long). Medians over the rounds;
``prune_vs_ingest`` is the ratio of the two chunk times.

The last line is a JSON object: ``bytes_per_send``, ``prune_chunk_ms``,
``prune_chunk_max_ms``, ``ingest_chunk_ms``, ``prune_vs_ingest``, ``sends``, ``rounds``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CHUNK = 1000  # gateway/app.py's chunk: Sends pruned per call
NODES = 100
READINGS = 6
T0 = 1_700_000_000.0


def run(sends: int, rounds: int, folder: Path, say: Any) -> dict[str, Any]:
    from aiotkit.gateway.lwm2m.senml import Record
    from aiotkit.gateway.storage import Registration, SqliteStorage

    store = SqliteStorage.open(folder / "gw.db")
    try:
        regs = []
        for i in range(NODES):
            store.save_registration(Registration(f"n{i}", f"r{i}", "127.0.0.1", 5683 + i, 60,
                                                 "U", "1.1", "</3/0>", T0, T0),
                                    "registered", "registered", T0)
            reg = store.registration(f"n{i}")
            assert reg is not None
            regs.append(reg)
        k = 0

        def ingest(n: int) -> float:
            nonlocal k
            t = time.perf_counter()
            with store.batch():
                for _ in range(n):
                    recs = [Record(f"/33001/0/{j}", "v", k * 0.5 + j) for j in range(READINGS)]
                    store.record_send(regs[k % NODES], k.to_bytes(4, "big"), bytes(16), 112,
                                      recs, T0 + k * 0.1)
                    k += 1
            return time.perf_counter() - t

        ingest(sends)
        store._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        per_send = os.path.getsize(folder / "gw.db") / sends
        say(f"{sends} Sends of {READINGS} readings from {NODES} nodes: "
            f"{per_send:.0f} bytes each on disk")
        ins: list[float] = []
        pru: list[float] = []
        for _ in range(rounds):
            ins.append(ingest(CHUNK))
            t = time.perf_counter()
            gone = store.prune_history(0.0, sends, chunk=CHUNK)
            pru.append(time.perf_counter() - t)
            if gone != CHUNK:
                raise RuntimeError(f"pruned {gone} Sends, not {CHUNK}")
        out = {"bytes_per_send": round(per_send),
               "prune_chunk_ms": round(statistics.median(pru) * 1e3, 1),
               "prune_chunk_max_ms": round(max(pru) * 1e3, 1),
               "ingest_chunk_ms": round(statistics.median(ins) * 1e3, 1),
               "sends": sends, "rounds": rounds}
        out["prune_vs_ingest"] = round(out["prune_chunk_ms"] / out["ingest_chunk_ms"], 3)
        say(f"{CHUNK} Sends: pruned in {out['prune_chunk_ms']} ms (max "
            f"{out['prune_chunk_max_ms']}), ingested in {out['ingest_chunk_ms']} ms "
            f"(x{out['prune_vs_ingest']})")
        return out
    finally:
        store.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="aiot bench history", description=__doc__.split(
        "\n\n", 1)[1].split("\n\nThe last line")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sends", type=int, default=200_000,
                    help="Sends kept (the steady size; default 200000)")
    ap.add_argument("--rounds", type=int, default=20,
                    help="interleaved ingest and prune rounds (default 20)")
    ap.add_argument("--json-only", action="store_true", help="print only the JSON line")
    args = ap.parse_args(argv)
    if args.sends < CHUNK or args.rounds < 1:
        print(f"aiot bench history: error: --sends at least {CHUNK}, --rounds at least 1",
              file=sys.stderr)
        return 2

    def say(line: str) -> None:
        if not args.json_only:
            print(line, flush=True)

    with tempfile.TemporaryDirectory(prefix="aiot-bench-history-") as tmp:
        out = run(args.sends, args.rounds, Path(tmp), say)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

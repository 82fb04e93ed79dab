"""``aiot bench provision``: what the field tools cost on simulated boards (issue 15).

All on one machine, in one run: a gateway (OSCORE required, REST key API) in this process
and simulated USB boards (tools/simboard.py: the MicroPython unix port behind a pty).

* **deploy**: ``aiot firmware deploy``'s library (tools/deploy.py) brings a blank board
  to the whole node (every file written, SHA-256-checked on the board, renamed), then
  again after a one-file change (``main.py``);
* **mpremote cp**: the real ``mpremote`` copies a file of the same size as the whole
  node onto the same board (``cp`` writes in place: no temp file, no check);
* **provision**: ``aiot provision``'s library (tools/provision.py) turns the deployed
  board into a registered, OSCORE-protected node: keys from the gateway's key API, the
  record written and read back, the board reset, until the gateway has it registered;
* **batch**: ``--boards`` boards (default 20) with the node on their flash, provisioned
  one after the other as ``--batch`` does; boards per minute.

The last line is a JSON object with ``provision_s``, ``batch_boards_per_min``,
``deploy_full_s``, ``deploy_one_file_s``, ``mpremote_cp_s`` and ``blank_to_registered_s``
(a blank board: the deploy plus the provisioning); goals: one board in under 20 s, a
one-file deploy under 3 s.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from aiotkit.boards.errors import AiotError

VERSION = "0.0.0-bench"
GOAL_PROVISION_S = 20.0
GOAL_ONE_FILE_S = 3.0


class BenchError(AiotError):
    """The benchmark could not run (the message says why)."""


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _gateway_config(d: Path, token: str) -> Path:
    from aiotkit.gateway.security import generate_key_hex

    (d / "gw.key").write_text(generate_key_hex() + "\n")
    (d / "gw.key").chmod(0o600)
    (d / "tokens").write_text(f"admin sha256:{hashlib.sha256(token.encode()).hexdigest()} "
                              "bench\n")
    (d / "tokens").chmod(0o600)
    conf = d / "gw.toml"
    conf.write_text(
        f'[gateway]\nid = "bench"\ndb = "gw.db"\nsecurity = "oscore"\n'
        f'[coap]\nhost = "127.0.0.1"\nport = {_free_port()}\n[shadow]\nenabled = false\n'
        '[security]\nkey_file = "gw.key"\n'
        '[rest]\nenabled = true\nport = 0\ntokens_file = "tokens"\n')
    return conf


def _sensor(flash: Path) -> None:
    # the unix-sim board's sensor: the replayed recording its config names (signal.i16)
    from aiotkit.boards import paths

    flash.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(paths.replay_files()[0], flash / "signal.i16")


def _flash(flash: Path, files: dict[str, bytes]) -> None:
    """What ``aiot firmware deploy`` leaves on a board, written into its flash folder,
    and its sensor."""
    _sensor(flash)
    for rel, data in files.items():
        (flash / rel).parent.mkdir(parents=True, exist_ok=True)
        (flash / rel).write_bytes(data)
    (flash / ".aiot").mkdir(exist_ok=True)
    (flash / ".aiot" / "manifest.json").write_text(json.dumps(
        {"version": VERSION, "board": "unix-sim", "arch": "x64", "complete": True,
         "files": {rel: hashlib.sha256(data).hexdigest() for rel, data in files.items()}}))


def _deploy(port: str, files: dict[str, bytes]) -> tuple[float, int]:
    from aiotkit.tools import deploy

    t0 = time.monotonic()
    with deploy.Board(port) as b:
        plan = deploy.deploy(b, files, {"version": VERSION, "board": "unix-sim",
                                        "arch": "x64"}, progress=lambda line: None)
    return time.monotonic() - t0, len(plan.write)


def _mpremote_cp(port: str, size: int, d: Path) -> float:
    tool = shutil.which("mpremote") or str(Path(sys.executable).with_name("mpremote"))
    if not Path(tool).exists():
        raise BenchError("mpremote is not installed: pip install 'aiotkit[field]'")
    blob = d / "blob.bin"
    blob.write_bytes(os.urandom(size))
    t0 = time.monotonic()
    p = subprocess.run([tool, "connect", port, "resume", "fs", "cp", str(blob), ":blob.bin"],
                       capture_output=True, text=True, timeout=300, check=False)
    took = time.monotonic() - t0
    if p.returncode != 0:
        raise BenchError(f"mpremote cp: {(p.stderr or p.stdout).strip()[-200:]}")
    return took


def _provision(port: str, endpoint: str, gw_uri: str, url: str, token: str) -> float:
    from aiotkit.tools import provision

    settings = provision.Settings(url=url, token=token, timeout=60.0)
    keys = provision.Keys(settings)
    job = provision.Job(port=port, endpoint=endpoint, gateway=gw_uri,
                        expect_firmware=VERSION)
    res = provision.provision_one(job, settings, keys, progress=lambda line: None)
    if res.result != "ok":
        raise BenchError(f"provisioning {endpoint} failed: {res.reason}")
    return res.seconds


async def run(boards: int, d: Path, say: Any) -> dict[str, Any]:
    from aiotkit.gateway.app import Gateway
    from aiotkit.gateway.config import load_config
    from aiotkit.tools import boards as board_defs
    from aiotkit.tools import firmwarecli
    from aiotkit.tools.simboard import SimBoard, SimBoards

    token = "bench-admin-" + os.urandom(8).hex()
    gw = Gateway(load_config(_gateway_config(d, token)))
    await gw.start()
    try:
        if gw.rest is None:
            raise BenchError("the gateway's REST API did not start")
        url, uri = gw.rest.url, gw.config.coap_uri
        files = firmwarecli.base_files(board_defs.load_board("unix-sim"))
        size = sum(map(len, files.values()))
        out: dict[str, Any] = {"boards": boards, "app_files": len(files), "app_bytes": size}
        _sensor(d / "ttyACM0.flash")
        async with SimBoard(d / "ttyACM0", flash=d / "ttyACM0.flash") as board:
            await board.wait_ready()
            full, n = await asyncio.to_thread(_deploy, board.port, files)
            say(f"deploy, blank board: {n} files, {size} bytes in {full:.2f} s")
            changed = dict(files)
            changed["main.py"] = files["main.py"] + b"# changed\n"
            one, n1 = await asyncio.to_thread(_deploy, board.port, changed)
            say(f"deploy, one file changed: {n1} written in {one:.2f} s")
            cp = await asyncio.to_thread(_mpremote_cp, board.port, size, d)
            say(f"mpremote cp of {size} bytes (one file, no check): {cp:.2f} s")
            await asyncio.to_thread(lambda: (d / "ttyACM0.flash" / "blob.bin").unlink(
                missing_ok=True))
            await asyncio.to_thread(_deploy, board.port, files)  # back to the release
            prov = await asyncio.to_thread(_provision, board.port, "bench-1", uri, url, token)
            say(f"provision one board until registered over OSCORE: {prov:.2f} s")
        out.update(deploy_full_s=round(full, 2), deploy_one_file_s=round(one, 2),
                   mpremote_cp_s=round(cp, 2), provision_s=round(prov, 2),
                   blank_to_registered_s=round(full + prov, 2))
        for i in range(1, boards + 1):
            _flash(d / "batch" / f"board-{i}.flash", files)
        async with SimBoards(d / "batch", boards) as many:
            await asyncio.gather(*(b.wait_ready() for b in many))
            t0 = time.monotonic()
            for i, b in enumerate(many, 1):
                await asyncio.to_thread(_provision, b.port, f"batch-{i}", uri, url, token)
            took = time.monotonic() - t0
        say(f"batch of {boards} boards: {took:.1f} s, {boards * 60 / took:.1f} boards/min")
        out.update(batch_s=round(took, 1), batch_boards_per_min=round(boards * 60 / took, 1))
        out.update(goal_provision_20s=prov < GOAL_PROVISION_S,
                   goal_one_file_deploy_3s=one < GOAL_ONE_FILE_S)
        return out
    finally:
        await gw.shutdown()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="aiot bench provision", description=__doc__.split(
        "\n\n", 1)[1].split("\n\nThe last line")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--boards", type=int, default=20, help="boards in the batch (default 20)")
    ap.add_argument("--json-only", action="store_true", help="print only the JSON line")
    args = ap.parse_args(argv)
    if not 1 <= args.boards <= 100:
        ap.error("--boards: choose 1..100")

    def say(line: str) -> None:
        if not args.json_only:
            print(line, flush=True)

    with tempfile.TemporaryDirectory(prefix="aiot-bench-provision-") as tmp:
        try:
            out = asyncio.run(run(args.boards, Path(tmp), say))
        except AiotError as e:
            print(f"aiot bench provision: error: {e}", file=sys.stderr)
            return 1
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

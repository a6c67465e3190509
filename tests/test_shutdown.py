"""Shutdown: every process a network runs stops in order, within bounds, without tracebacks, and
none outlives `qkdnet up`, even when `qkdnet up` is SIGKILLed (README "Stopping a network").

Two boots of examples/two-nodes.yaml with `qkdnet up` (nodes, plant stub, orchestrator, reaper):
one stopped with SIGTERM, one SIGKILLed. The pieces are also tested on their own: the plant stub's
long poll under cancellation, `Shutdown` with a step that ignores cancellation, the hard stop, the
reaper process and `terminate`'s SIGTERM -> SIGKILL escalation.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from orchestrator.reaper import spawn, terminate
from qkdnode.devices.fabric import FabricService, Plant
from qkdnode.eventloop import Shutdown

ROOT = Path(__file__).resolve().parents[1]
SUITE_BUDGET_S = 180  # two boots of a network (conftest "suite budgets"; never asserted)
TWO_NODES = ROOT / "examples" / "two-nodes.yaml"


# -- helpers ------------------------------------------------------------------------------------------
def processes_of(state: Path) -> dict[int, str]:
    """Live (non-zombie) processes whose command line names a path in `state`."""
    out: dict[int, str] = {}
    needle = f"{state}/"
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = Path(entry.path, "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        if needle in cmdline and stat[stat.rindex(")") + 2] != "Z":
            out[int(entry.name)] = cmdline
    return out


def wait_until_gone(state: Path, timeout: float) -> dict[int, str]:
    """The processes of `state` still alive after up to `timeout` s (empty: all gone)."""
    deadline = time.monotonic() + timeout
    left = processes_of(state)
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = processes_of(state)
    return left


def boot(state: Path, timeout: float = 90) -> subprocess.Popen[bytes]:
    log = open(state.parent / f"{state.name}-qkdnet.out", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.netctl", "up", "--topology", str(TWO_NODES), "--state-dir", str(state)],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )
    log.close()
    deadline = time.monotonic() + timeout
    while not (state / "network.json").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            wait_until_gone(state, 15)
            out = (state.parent / f"{state.name}-qkdnet.out").read_text(errors="replace")[-3000:]
            raise AssertionError(f"qkdnet up did not come up (exit {proc.returncode}):\n{out}")
        time.sleep(0.1)
    return proc


def kinds(procs: dict[int, str]) -> set[str]:
    names = ("qkdnode.cli", "qkdnode.zygote", "qkdnode.devices.fabric", "orchestrator.cli", "orchestrator.reaper")
    return {n for cmd in procs.values() for n in names if n in cmd}


#: how qkdnet up starts nodes: forked by the node zygote (default), or each exec'd (QKDNET_SPAWN=exec)
FORK = os.environ.get("QKDNET_SPAWN", "fork") != "exec"
NODE_KIND = "qkdnode.zygote" if FORK else "qkdnode.cli"


def node_pids(state: Path) -> set[int]:
    net = json.loads((state / "network.json").read_text())
    return {int(n["pid"]) for n in net["nodes"].values()}


# -- qkdnet up, stopped with SIGTERM and killed with SIGKILL ----------------------------------------
@pytest.mark.timeout(180)
def test_sigterm_stops_every_process_without_a_traceback(tmp_path: Path) -> None:
    state = tmp_path / "net"
    proc = boot(state)
    try:
        children = processes_of(state)
        # nodes, plant stub, orchestrator and the reaper run, each naming the state dir
        assert kinds(children) == {NODE_KIND, "qkdnode.devices.fabric", "orchestrator.cli", "orchestrator.reaper"}
        nodes = node_pids(state)
        assert len(nodes) == 2 and nodes <= set(children) and all(NODE_KIND in children[p] for p in nodes)
        # each child leads its own process group (so that a stop reaches what it started, too)
        for pid, cmd in children.items():
            if "orchestrator.reaper" not in cmd:
                assert os.getpgid(pid) == pid, cmd
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)  # the bound: its own stop is bounded well below this
        assert code == 0, (tmp_path / "net-qkdnet.out").read_text(errors="replace")[-3000:]
        left = wait_until_gone(state, 10)  # the reaper exits on its own once qkdnet up is gone
        assert not left, f"processes of the network left after qkdnet up exited: {left}"
        logs = sorted((state / "logs").glob("*.log"))
        assert {p.stem for p in logs} >= {"alice", "bob", "fabric", "orchestrator-lab"}
        for log in logs:
            text = log.read_text(errors="replace")
            assert "Traceback" not in text, f"{log.name}:\n{text[-3000:]}"
            assert "Lock is not acquired" not in text, log.name
        # nothing was left for the reaper to do: qkdnet up reaped every child itself
        assert not (state / "logs" / "reaper.log").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in wait_until_gone(state, 10):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.timeout(180)
def test_children_do_not_outlive_a_sigkilled_qkdnet_up(tmp_path: Path) -> None:
    state = tmp_path / "net"
    proc = boot(state)
    try:
        children = processes_of(state)
        nodes = node_pids(state)
        assert len(nodes) == 2 and nodes <= set(children)
        proc.kill()
        proc.wait(30)
        left = wait_until_gone(state, 20)  # a few seconds: SIGTERM, then SIGKILL after the reaper's grace
        assert not left, f"processes outlived a SIGKILLed qkdnet up: {left}"
        report = (state / "logs" / "reaper.log").read_text()
        groups = 5 if FORK else 4  # 2 nodes, plant stub, orchestrator (and the node zygote)
        assert f"stopped {groups} process group(s)" in report, report
        for log in sorted((state / "logs").glob("*.log")):
            assert "Traceback" not in log.read_text(errors="replace"), log.name
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in processes_of(state):
            os.kill(pid, signal.SIGKILL)


# -- the plant stub's long poll -----------------------------------------------------------------------
async def _ticks(n: int) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def test_plant_long_poll_is_safe_under_repeated_cancellation() -> None:
    """A long poll cancelled (twice, as a server shutdown may) while a change is being notified:
    never "Lock is not acquired", the condition's lock is never left held, and the notifier is
    unharmed. Every interleaving of the two cancellations and the notifier's hold is tried."""
    failures = {}
    for a, b, hold in itertools.product(range(5), range(5), range(5)):
        service = FabricService(Plant({}))

        async def notifier() -> None:
            async with service._changed:
                service.plant.version += 1
                service._changed.notify_all()
                await _ticks(hold)

        poll = asyncio.create_task(service.wait_changed(service.plant.version, 30))
        await _ticks(3)
        note = asyncio.create_task(notifier())
        await _ticks(a)
        poll.cancel()
        await _ticks(b)
        poll.cancel()
        results = await asyncio.wait_for(asyncio.gather(poll, note, return_exceptions=True), 10)
        errors = [repr(r) for r in results if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError)]
        if service._changed.locked():
            errors.append("lock left held")
        if errors:
            failures[(a, b, hold)] = errors
    assert not failures


async def test_plant_close_answers_pending_long_polls() -> None:
    """At shutdown a pending long poll gets its answer (the current plant) instead of being
    cancelled; a poll that arrives while closing answers at once."""
    service = FabricService(Plant({}))
    runner = web.AppRunner(service.app(), access_log=None, shutdown_timeout=30)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    async with aiohttp.ClientSession() as http:
        url = f"http://127.0.0.1:{port}/lightpaths?after={service.plant.version}&wait=30"
        pending = asyncio.create_task(http.get(url))
        await asyncio.sleep(0.3)
        assert not pending.done()  # it waits for a change
        await service.close()
        async with await asyncio.wait_for(pending, 10) as r:
            assert r.status == 200
            assert (await r.json())["version"] == service.plant.version
        async with await asyncio.wait_for(http.get(url), 10) as r:
            assert r.status == 200
    await asyncio.wait_for(runner.cleanup(), 10)


# -- bounded shutdown steps and the hard stop ----------------------------------------------------------
async def test_shutdown_leaves_a_stubborn_step_behind_and_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    release = asyncio.Event()
    ran: list[str] = []

    async def stubborn() -> None:  # ignores cancellation until released
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                continue

    async def failing() -> None:
        raise OSError("socket gone")

    async def fine() -> None:
        ran.append("fine")

    sd = Shutdown("test", 30.0)
    with caplog.at_level(logging.WARNING, logger="qkdnode.eventloop"):
        assert await sd.step("stubborn", stubborn(), 0.3) is False
        assert await sd.step("failing", failing(), 1.0) is False
        assert await sd.step("fine", fine(), 1.0) is True
    assert ran == ["fine"] and sd.late == ["stubborn", "failing"]
    messages = [r.getMessage() for r in caplog.records]
    assert any("stubborn did not stop within 0.3 s" in m for m in messages)
    assert any("stopping failing failed: OSError: socket gone" in m for m in messages)
    assert all(r.exc_info is None for r in caplog.records)  # one line each, no traceback
    release.set()


def test_hard_stop_ends_a_process_whose_stop_blocks_the_loop() -> None:
    code = ("import asyncio, time\n"
            "from qkdnode.eventloop import arm_hard_stop\n"
            "async def main():\n"
            "    arm_hard_stop(0.5)\n"
            "    time.sleep(60)  # a stop step that blocks the event loop\n"
            "asyncio.run(main())\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert r.returncode == 1
    assert "not stopped 0.5 s after the stop signal; exiting now" in r.stderr
    assert "Traceback" not in r.stderr


# -- the reaper and terminate -------------------------------------------------------------------------
STUBBORN = ("import signal, sys, time\n"
            "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "print('ready', flush=True)\n"
            "time.sleep(120)\n")
POLITE = "import sys, time\nprint('ready', flush=True)\ntime.sleep(120)\n"
#: a group leader with a member (as a use case coordinator with its peers): prints the member's pid
LEADER = ("import subprocess, sys, time\n"
          "member = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
          "print(member.pid, flush=True)\n"
          "time.sleep(120)\n")


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def test_reaper_stops_registered_groups_when_its_launcher_goes(tmp_path: Path) -> None:
    """The reaper acts on EOF (what the kernel delivers when the launcher dies however it dies):
    SIGTERM to each registered group, members included, SIGKILL to a group that ignores it."""
    log = tmp_path / "reaper.log"
    leader = subprocess.Popen([sys.executable, "-c", LEADER], stdout=subprocess.PIPE, start_new_session=True)
    stubborn = subprocess.Popen([sys.executable, "-c", STUBBORN], stdout=subprocess.PIPE, start_new_session=True)
    forgotten = subprocess.Popen([sys.executable, "-c", POLITE], stdout=subprocess.PIPE, start_new_session=True)
    procs = [leader, stubborn, forgotten]
    member = 0
    try:
        assert leader.stdout is not None
        member = int(leader.stdout.readline())
        for p in (stubborn, forgotten):
            assert p.stdout is not None and p.stdout.readline() == b"ready\n"
        assert os.getpgid(member) == leader.pid and _alive(member)
        reaper = subprocess.Popen([sys.executable, "-m", "orchestrator.reaper", "--log", str(log), "--grace", "1"],
                                  stdin=subprocess.PIPE)
        assert reaper.stdin is not None
        reaper.stdin.write(f"+{leader.pid}\n+{stubborn.pid}\n+{forgotten.pid}\n-{forgotten.pid}\n".encode())
        reaper.stdin.flush()
        time.sleep(0.3)
        assert all(p.poll() is None for p in procs)  # nothing happens while the launcher lives
        reaper.stdin.close()  # the launcher is gone
        assert reaper.wait(30) == 0
        assert leader.wait(10) == -signal.SIGTERM
        assert stubborn.wait(10) == -signal.SIGKILL
        deadline = time.monotonic() + 10
        while _alive(member) and time.monotonic() < deadline:  # not our child: cannot wait() for it
            time.sleep(0.05)
        assert not _alive(member)
        assert forgotten.poll() is None  # unregistered: not the reaper's business any more
        assert "stopped 2 process group(s) (1 killed after 1 s)" in log.read_text()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        if member and _alive(member):
            os.kill(member, signal.SIGKILL)


async def test_terminate_escalates_to_sigkill_and_reaps() -> None:
    cmd = [sys.executable, "-c"]
    polite = await spawn(*cmd, POLITE, stdout=asyncio.subprocess.PIPE)
    stubborn = await spawn(*cmd, STUBBORN, stdout=asyncio.subprocess.PIPE)
    try:
        for p in (polite, stubborn):
            assert p.stdout is not None and await asyncio.wait_for(p.stdout.readline(), 30) == b"ready\n"
            assert os.getpgid(p.pid) == p.pid  # its own process group
        await asyncio.wait_for(terminate([polite, stubborn], grace=0.5), 30)
        assert polite.returncode == -signal.SIGTERM
        assert stubborn.returncode == -signal.SIGKILL
        assert not _alive(polite.pid) and not _alive(stubborn.pid)
    finally:
        for p in (polite, stubborn):
            if p.returncode is None:
                p.kill()
                await p.wait()

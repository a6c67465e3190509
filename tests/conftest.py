"""Shared fixtures: real node daemons on 127.0.0.1 port 0, NETCONF clients, raw SSH sessions.

Everything here talks to a real server over real SSH; nothing is stubbed.

* ``node_factory`` / ``node``: a `qkdnode.daemon.Node` started in this process, on its own asyncio
  loop in a background thread (so synchronous clients such as ncclient can be used from plain
  test functions), with its state dir under ``tmp_path``. The handle gives host, port,
  credentials, the SSH host public key, and ``call()`` to run code on the node's loop.
* ``node_process``: the same daemon as a subprocess (``qkdnode run --netconf-port 0``), for tests
  that need signals or a separate process (persistence, CLI clients).
* ``connect`` / ``manager``: ncclient managers that pin the node's SSH host key (no blind trust).
* ``raw_netconf``: a tiny asyncssh NETCONF client that sends bytes exactly as written, for framing
  tests and for base:1.0-only clients.

Helpers that test modules import directly (``from conftest import ...``) are defined at the end.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import asyncssh
import pytest
from lxml import etree

import ncclient.transport.session as _nc_session
from ncclient import manager as nc_manager

# ncclient 0.7.1 polls its transport every `ncclient.transport.session.TICK` seconds (0.1 by
# default) and only sends queued RPCs between polls; 1 ms keeps every RPC from costing 100 ms.
# The orchestrator's own sessions send directly (orchestrator/nodeclient.py) and set TICK to 0.5 s
# when that module is imported, i.e. while the test modules are collected: the fixture below sets
# the tests' value again once they all are.
_TEST_TICK = 0.001
_nc_session.TICK = _TEST_TICK


@pytest.fixture(autouse=True, scope="session")
def _ncclient_tick() -> None:
    _nc_session.TICK = _TEST_TICK

REPO_ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
HOST = "127.0.0.1"
USERNAME = "admin"
PASSWORD = "admin"

T = TypeVar("T")


# -- in-process nodes --------------------------------------------------------------------------
class LoopThread:
    """An asyncio loop running in a daemon thread; coroutines are submitted from the test thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="node-loop", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Callable[[], T], timeout: float = 30) -> T:
        async def _wrap() -> T:
            return fn()

        return self.run(_wrap(), timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self.loop.close()


@dataclass
class NodeHandle:
    """Where a running node listens and how to log in; `node` is None for subprocess nodes."""

    host: str
    port: int
    username: str
    password: str
    state_dir: Path
    host_key_b64: str  # base64 of the SSH host public key (OpenSSH wire format)
    node: Any = None
    loop: LoopThread | None = None
    proc: subprocess.Popen[str] | None = None
    stopped: bool = field(default=False)

    @property
    def host_public_key(self) -> asyncssh.SSHKey:
        return asyncssh.import_public_key(f"ssh-ed25519 {self.host_key_b64}")

    def call(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the node's own loop (the only thread allowed to touch its libyang trees)."""
        assert self.loop is not None, "call() needs an in-process node"
        return self.loop.call(fn)

    def running_xml(self) -> str:
        return self.call(lambda: self.node.datastores.get_config_xml(_ds("running")))

    def candidate_xml(self) -> str:
        return self.call(lambda: self.node.datastores.get_config_xml(_ds("candidate")))

    def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        if self.node is not None and self.loop is not None:
            self.loop.run(asyncio.wait_for(self.node.stop(), 10), timeout=15)
        if self.proc is not None:
            stop_process(self.proc)


def _ds(name: str) -> Any:
    from qkdnode.datastore import Datastore

    return Datastore(name)


def host_key_b64(state_dir: Path) -> str:
    key = asyncssh.read_private_key(str(state_dir / "ssh_host_ed25519_key"))
    return key.export_public_key("openssh").decode().split()[1]


def node_config(name: str, state_dir: Path, port: int = 0, **netconf: Any) -> dict[str, Any]:
    """A node config mapping (what `parse_node_config` takes, or what a YAML file holds)."""
    nc: dict[str, Any] = {"host": HOST, "port": port, "users": [{"username": USERNAME, "password": PASSWORD}]}
    nc.update(netconf)
    return {"name": name, "location": f"{name}-site", "state_dir": str(state_dir), "netconf": nc}


def start_node(loop: LoopThread, raw: dict[str, Any], username: str = USERNAME,
               password: str = PASSWORD) -> NodeHandle:
    """Start an in-process node from a config mapping (`node_config` plus what a test adds) on
    `loop`; the handle logs in to NETCONF as `username`."""
    from qkdnode.config import parse_node_config
    from qkdnode.daemon import Node

    cfg = parse_node_config(raw)

    async def _start() -> Any:
        node = Node(cfg)
        await node.start()
        return node

    node = loop.run(_start())
    sd = Path(raw["state_dir"])
    return NodeHandle(HOST, node.netconf_port, username, password, sd, host_key_b64(sd), node=node, loop=loop)


@pytest.fixture(scope="session")
def node_loop() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.close()


@pytest.fixture
def node_factory(tmp_path: Path, node_loop: LoopThread) -> Iterator[Callable[..., NodeHandle]]:
    """`start(name="n1", state_dir=None, **netconf)` -> a started in-process node on port 0."""
    handles: list[NodeHandle] = []

    def start(name: str = "n1", state_dir: Path | None = None, **netconf: Any) -> NodeHandle:
        sd = Path(state_dir) if state_dir is not None else tmp_path / f"state-{name}"
        h = start_node(node_loop, node_config(name, sd, **netconf))
        handles.append(h)
        return h

    yield start
    for h in handles:
        h.stop()


@pytest.fixture
def node(node_factory: Callable[..., NodeHandle]) -> NodeHandle:
    return node_factory()


# -- subprocess nodes --------------------------------------------------------------------------
def stop_process(proc: subprocess.Popen[str], sig: int = signal.SIGTERM, timeout: float = 10) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.returncode


@pytest.fixture
def node_process(tmp_path: Path) -> Iterator[Callable[..., NodeHandle]]:
    """`start(name="p1", state_dir=None)` -> `qkdnode run` as a subprocess, after its READY line."""
    import yaml

    handles: list[NodeHandle] = []

    def start(name: str = "p1", state_dir: Path | None = None, timeout: float = 30) -> NodeHandle:
        sd = Path(state_dir) if state_dir is not None else tmp_path / f"state-{name}"
        cfg_file = tmp_path / f"{name}.yaml"
        cfg = node_config(name, sd, port=8300)  # the command line below overrides the port with 0
        cfg_file.write_text(yaml.safe_dump(cfg))
        exe = VENV_BIN / "qkdnode"
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "qkdnode.cli"]
        log = tmp_path / f"{name}.log"  # stderr to a file: an undrained pipe could block the daemon
        with open(log, "ab") as err:
            proc = subprocess.Popen(
                [*cmd, "run", "--config", str(cfg_file), "--state-dir", str(sd), "--netconf-port", "0"],
                stdout=subprocess.PIPE, stderr=err, text=True, cwd=tmp_path,
            )
        line = _read_line(proc, timeout)
        m = re.fullmatch(rf"READY {re.escape(name)} netconf=(\d+)", line.strip())
        if m is None:
            stop_process(proc, signal.SIGKILL)
            raise AssertionError(f"qkdnode did not start: {line!r}\n{log.read_text()}")
        h = NodeHandle(HOST, int(m.group(1)), USERNAME, PASSWORD, sd, host_key_b64(sd), proc=proc)
        handles.append(h)
        return h

    yield start
    for h in handles:
        h.stop()


def _read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    out: list[str] = []
    t = threading.Thread(target=lambda: out.append(proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    t.start()
    t.join(timeout)
    return out[0] if out else ""


# -- ncclient ----------------------------------------------------------------------------------
def nc_connect(h: NodeHandle, timeout: float = 10, **kw: Any) -> nc_manager.Manager:
    """An ncclient session to `h`, pinning the node's host key."""
    params: dict[str, Any] = dict(
        host=h.host, port=h.port, username=h.username, password=h.password, timeout=timeout,
        hostkey_verify=True, hostkey_b64=h.host_key_b64, look_for_keys=False, allow_agent=False,
    )
    params.update(kw)
    return nc_manager.connect(**params)


@pytest.fixture
def connect(node: NodeHandle) -> Iterator[Callable[..., nc_manager.Manager]]:
    """`connect(handle=node, **ncclient_kwargs)` -> a Manager, closed at teardown (before the node
    stops). For other nodes pass their handle, or use `nc_connect` and close it yourself."""
    managers: list[nc_manager.Manager] = []

    def _connect(h: NodeHandle | None = None, **kw: Any) -> nc_manager.Manager:
        m = nc_connect(h or node, **kw)
        managers.append(m)
        return m

    yield _connect
    for m in managers:
        close_quietly(m)


@pytest.fixture
def manager(connect: Callable[..., nc_manager.Manager]) -> nc_manager.Manager:
    return connect()


def close_quietly(m: nc_manager.Manager) -> None:
    try:
        if m.connected:
            m.close_session()
    except Exception:
        pass
    try:
        m._session.close()  # noqa: SLF001 - make sure the transport thread ends
    except Exception:
        pass


# -- raw NETCONF over asyncssh -----------------------------------------------------------------
BASE_10 = "urn:ietf:params:netconf:base:1.0"
BASE_11 = "urn:ietf:params:netconf:base:1.1"
NC_NS = "urn:ietf:params:xml:ns:netconf:base:1.0"
EOM = b"]]>]]>"


class RawNetconf:
    """A NETCONF client that writes exactly the bytes it is given and decodes both framings."""

    def __init__(self, conn: asyncssh.SSHClientConnection, writer: Any, reader: Any) -> None:
        self.conn = conn
        self.writer = writer
        self.reader = reader
        self.chunked = False
        self.server_hello: etree._Element | None = None
        self._buf = b""

    @classmethod
    async def open(cls, h: NodeHandle) -> "RawNetconf":
        conn = await asyncssh.connect(
            h.host, h.port, username=h.username, password=h.password, client_keys=None,
            known_hosts=([h.host_public_key], [], []), agent_path=None,
        )
        writer, reader, _ = await conn.open_session(subsystem="netconf", encoding=None)
        return cls(conn, writer, reader)

    async def _fill(self, timeout: float) -> bool:
        data = await asyncio.wait_for(self.reader.read(65536), timeout)
        if not data:
            return False
        self._buf += data
        return True

    async def read_message(self, timeout: float = 5) -> bytes | None:
        """The next message in the current framing; None when the server closed the channel."""
        while True:
            if not self.chunked:
                idx = self._buf.find(EOM)
                if idx >= 0:
                    msg, self._buf = self._buf[:idx], self._buf[idx + len(EOM):]
                    return msg
            else:
                msg = self._take_chunked()
                if msg is not None:
                    return msg
            if not await self._fill(timeout):
                return None

    def _take_chunked(self) -> bytes | None:
        pos, parts = 0, []
        while True:
            m = re.compile(rb"\n#(#|[1-9][0-9]*)\n").match(self._buf, pos)
            if m is None:
                if len(self._buf) - pos > 14 and not self._buf[pos:].startswith(b"\n#"):
                    raise AssertionError(f"bad chunk framing from server: {self._buf[pos:pos + 40]!r}")
                return None
            if m.group(1) == b"#":
                self._buf = self._buf[m.end():]
                return b"".join(parts)
            size = int(m.group(1))
            if len(self._buf) < m.end() + size:
                return None
            parts.append(self._buf[m.end(): m.end() + size])
            pos = m.end() + size

    async def hello(self, *caps: str) -> etree._Element:
        """Read the server hello and send ours (EOM-framed); switch to chunked if both have 1.1."""
        raw = await self.read_message()
        assert raw is not None, "no server hello"
        self.server_hello = etree.fromstring(raw)
        body = "".join(f"<capability>{c}</capability>" for c in caps)
        self.writer.write(f'<hello xmlns="{NC_NS}"><capabilities>{body}</capabilities></hello>'.encode() + EOM)
        server_caps = {c.text for c in self.server_hello.iter(f"{{{NC_NS}}}capability")}
        self.chunked = BASE_11 in caps and BASE_11 in server_caps
        return self.server_hello

    def send_bytes(self, data: bytes) -> None:
        self.writer.write(data)

    def frame(self, message: bytes) -> bytes:
        if self.chunked:
            return b"\n#%d\n" % len(message) + message + b"\n##\n"
        return message + EOM

    async def rpc(self, body: str, message_id: str | None = "1", timeout: float = 5) -> etree._Element:
        mid = f' message-id="{message_id}"' if message_id is not None else ""
        self.send_bytes(self.frame(f'<rpc xmlns="{NC_NS}"{mid}>{body}</rpc>'.encode()))
        reply = await self.read_message(timeout)
        assert reply is not None, "server closed the session"
        return etree.fromstring(reply)

    async def close(self) -> None:
        self.conn.close()
        try:
            await asyncio.wait_for(self.conn.wait_closed(), 5)
        except Exception:
            pass


@pytest.fixture
async def raw_netconf() -> Any:
    """`await raw_netconf(handle)` -> a connected `RawNetconf` (hello not yet exchanged)."""
    opened: list[RawNetconf] = []

    async def _open(h: NodeHandle) -> RawNetconf:
        c = await RawNetconf.open(h)
        opened.append(c)
        return c

    yield _open
    for c in opened:
        await c.close()


# -- ETSI GS QKD 015 data helpers --------------------------------------------------------------
QKD_NS = "urn:etsi:qkd:yang:etsi-qkd-node"
QKD_TYPES_NS = "urn:etsi:qkd:yang:etsi-qkd-node-types"
NC_NOTIF_NS = "urn:ietf:params:xml:ns:yang:ietf-netconf-notifications"
MONITORING_NS = "urn:ietf:params:xml:ns:yang:ietf-netconf-monitoring"
WD_NS = "urn:ietf:params:xml:ns:yang:ietf-netconf-with-defaults"
NSMAP = {"nc": NC_NS, "q": QKD_NS, "t": QKD_TYPES_NS, "ncn": NC_NOTIF_NS, "mon": MONITORING_NS}


def new_uuid() -> str:
    return str(uuid.uuid4())


def link_xml(
    link_id: str, *, kind: str | None = "PHYS", operation: str | None = None, extra: str = "",
    enable: bool | None = None,
) -> str:
    """One `<qkd_link>` (no enclosing containers). `kind` PHYS adds phys_* leaves, VIRT virt_*."""
    op = f' xmlns:nc="{NC_NS}" nc:operation="{operation}"' if operation else ""
    parts = [f"<qkd_link{op}><qkdl_id>{link_id}</qkdl_id>"]
    if enable is not None:
        parts.append(f"<qkdl_enable>{str(enable).lower()}</qkdl_enable>")
    if kind is not None:
        parts.append(f'<qkdl_type xmlns:t="{QKD_TYPES_NS}">t:{kind}</qkdl_type>')
    if kind == "PHYS":
        parts.append("<phys_channel_att>3.500</phys_channel_att><phys_wavelength>20</phys_wavelength>")
    elif kind == "VIRT":
        parts.append(f"<virt_prev_hop>{new_uuid()}</virt_prev_hop><virt_bandwidth>1000</virt_bandwidth>")
    parts.append(extra)
    parts.append("</qkd_link>")
    return "".join(parts)


def links_config(*links: str, node_op: str | None = None) -> str:
    """`<config>` holding `qkd_node/qkd_links` with the given `<qkd_link>` elements."""
    op = f' xmlns:nc="{NC_NS}" nc:operation="{node_op}"' if node_op else ""
    return (
        f'<config xmlns="{NC_NS}"><qkd_node xmlns="{QKD_NS}"{op}><qkd_links>{"".join(links)}'
        "</qkd_links></qkd_node></config>"
    )


def parse_reply(xml: str | bytes) -> etree._Element:
    return etree.fromstring(xml.encode() if isinstance(xml, str) else xml)


def link_ids(xml: str | bytes | etree._Element) -> set[str]:
    if isinstance(xml, etree._Element):
        root = xml
    else:
        text = xml.decode() if isinstance(xml, bytes) else xml
        text = re.sub(r"^\s*<\?xml[^>]*\?>", "", text)  # ncclient's data_xml has a declaration
        root = etree.fromstring(f"<r>{text}</r>".encode())
    return {e.text for e in root.iterfind(".//q:qkd_link/q:qkdl_id", NSMAP)}


def rpc_errors(reply: etree._Element) -> list[dict[str, Any]]:
    """The `<rpc-error>`s of a reply as dicts (type, tag, path, message, info{name: text})."""
    out = []
    for err in reply.iterfind("nc:rpc-error", NSMAP):
        info = err.find("nc:error-info", NSMAP)
        path_el = err.find("nc:error-path", NSMAP)
        out.append({
            "type": err.findtext("nc:error-type", namespaces=NSMAP),
            "tag": err.findtext("nc:error-tag", namespaces=NSMAP),
            "severity": err.findtext("nc:error-severity", namespaces=NSMAP),
            "path": path_el.text.strip() if path_el is not None and path_el.text else None,
            "path_nsmap": dict(path_el.nsmap) if path_el is not None else {},
            "app_tag": err.findtext("nc:error-app-tag", namespaces=NSMAP),
            "message": err.findtext("nc:error-message", namespaces=NSMAP),
            "info": {etree.QName(c).localname: (c.text or "").strip() for c in info} if info is not None else {},
        })
    return out


def env_with_venv() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


# -- suite budgets -------------------------------------------------------------------------------------
# Every test has a timeout (pytest-timeout, pyproject.toml). Each test file (suite) also has a time
# budget: SUITE_BUDGET_S in the module, else DEFAULT_SUITE_BUDGET_S. Tests never assert on time; the
# session ends with a report of each suite against its budget so that a slow suite is seen, and long
# soak/fuzz runs stay behind their own make targets.
DEFAULT_SUITE_BUDGET_S = 90.0
_suite_times: dict[str, float] = {}
_suite_budgets: dict[str, float] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    suite = report.nodeid.split("::", 1)[0]
    _suite_times[suite] = _suite_times.get(suite, 0.0) + report.duration


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        suite = item.nodeid.split("::", 1)[0]
        module = getattr(item, "module", None)
        _suite_budgets[suite] = float(getattr(module, "SUITE_BUDGET_S", DEFAULT_SUITE_BUDGET_S))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _suite_times:
        return
    over = [(s, t, _suite_budgets.get(s, DEFAULT_SUITE_BUDGET_S)) for s, t in _suite_times.items()
            if t > _suite_budgets.get(s, DEFAULT_SUITE_BUDGET_S)]
    terminalreporter.section("suite budgets")
    for suite, t in sorted(_suite_times.items(), key=lambda kv: -kv[1])[:8]:
        budget = _suite_budgets.get(suite, DEFAULT_SUITE_BUDGET_S)
        terminalreporter.write_line(f"{suite}: {t:.1f} s (budget {budget:.0f} s)")
    for suite, t, budget in over:
        terminalreporter.write_line(f"OVER BUDGET: {suite} took {t:.1f} s, budget {budget:.0f} s")

"""The NETCONF server: asyncssh `netconf` subsystem, sessions, capabilities, monitoring state.

RFC 6241 over SSH (RFC 6242). One `NetconfServer` serves one node's datastores.
"""

from __future__ import annotations

import hmac
import os
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from xml.sax.saxutils import escape

import asyncssh
import libyang
from libyang.util import c2str

from ..datastore import Change, Datastore, Datastores
from ..datatree import xml_path
from .filters import ListKeys
from .namespaces import (
    MONITORING_NS,
    NC_NOTIFICATIONS_NS,
    NC_NS,
    SERVER_CAPABILITIES,
)
from .notifications import EventStream, event_time
from .session import NetconfSession, SessionInfo

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class User:
    username: str
    password: str | None = None
    authorized_keys: tuple[str, ...] = ()  # OpenSSH public key lines
    groups: tuple[str, ...] = ("admin",)  # NACM groups in the initial /nacm of a new node
    recovery: bool = False  # NACM recovery user: access control does not apply (RFC 8341 3.2)


@dataclass(frozen=True)
class Limits:
    max_message_bytes: int = 16 * 1024 * 1024
    max_sessions: int = 64
    max_xml_depth: int = 64  # element nesting of one message
    rpc_rate: float = 1000.0  # RPCs per second per session (token bucket) ...
    rpc_burst: int = 2000  # ... with this burst; beyond: resource-denied


@dataclass
class ServerStats:
    start_time: str = field(default_factory=event_time)
    in_bad_hellos: int = 0
    in_sessions: int = 0
    dropped_sessions: int = 0
    in_rpcs: int = 0
    in_bad_rpcs: int = 0
    out_rpc_errors: int = 0


RECORD_ENV = "QKDNODE_NETCONF_RECORD"


def message_recorder() -> Callable[[int, str, bytes], None] | None:
    """An audit aid: with QKDNODE_NETCONF_RECORD=FILE every NETCONF message this server receives
    or sends (after SSH decryption, before framing) is appended to FILE. Off by default."""
    target = os.environ.get(RECORD_ENV)
    if not target:
        return None
    path = Path(target)

    def record(session_id: int, direction: str, message: bytes) -> None:
        with open(path, "ab") as f:
            f.write(f"<!-- pid {os.getpid()} session {session_id} {direction} -->\n".encode() + message + b"\n")

    return record


def load_host_key(path: Path) -> asyncssh.SSHKey:
    """The node's SSH host key, generated once and kept in the state dir."""
    if path.exists():
        return asyncssh.read_private_key(str(path))
    key = asyncssh.generate_private_key("ssh-ed25519")
    path.parent.mkdir(parents=True, exist_ok=True)
    key.write_private_key(str(path))
    path.chmod(0o600)
    return key


class NetconfServer:
    def __init__(
        self,
        datastores: Datastores,
        users: list[User],
        host_key_path: Path,
        limits: Limits | None = None,
    ) -> None:
        self.datastores = datastores
        self.ctx: libyang.Context = datastores.ctx
        self.users = {u.username: u for u in users}
        self.host_key = load_host_key(host_key_path)
        self.limits = limits or Limits()
        self.list_keys = ListKeys(self.ctx)
        self.events = EventStream(self.list_keys)
        self.sessions: dict[int, NetconfSession] = {}
        self.stats = ServerStats()
        self._next_id = 1
        self._ssh: asyncssh.SSHAcceptor | None = None
        self.after_reply: Callable[[NetconfSession], None] | None = None
        self.rpc_observer: Callable[[str, bool], None] | None = None  # (operation, ok) per reply (metrics)
        self.recorder = message_recorder()
        self._hello_caps = self._capabilities()
        from .rpc import RpcDispatcher

        self.dispatcher = RpcDispatcher(self)
        from .nacm import Nacm

        self.nacm = Nacm(self.ctx, lambda: _nacm_subtree(datastores),
                         [u.username for u in users if u.recovery])
        datastores.providers.append(self.nacm.state_xml)
        datastores.providers.append(self.monitoring_state)
        datastores.listeners.append(self._config_changed)

    # -- capabilities and schemas ---------------------------------------------------------------
    def _modules(self) -> list[libyang.Module]:
        return [m for m in self.ctx if m.implemented()]

    def _capabilities(self) -> list[str]:
        caps = list(SERVER_CAPABILITIES)
        for mod in self._modules():
            ns = c2str(mod.cdata.ns)
            rev = c2str(mod.cdata.revision)
            cap = f"{ns}?module={mod.name()}"
            if rev:
                cap += f"&revision={rev}"
            feats = [f.name() for f in mod.features() if f.state()]
            if feats:
                cap += "&features=" + ",".join(feats)
            caps.append(cap)
        caps.append(f"urn:ietf:params:netconf:capability:yang-library:1.0?revision=2019-01-04&module-set-id={len(caps)}")
        return caps

    def hello_xml(self, session_id: int) -> str:
        caps = "".join(f"<capability>{escape(c)}</capability>" for c in self._hello_caps)
        return (
            f'<hello xmlns="{NC_NS}"><capabilities>{caps}</capabilities>'
            f"<session-id>{session_id}</session-id></hello>"
        )

    def schema_text(self, identifier: str, version: str | None) -> str | None:
        for mod in self.ctx:
            if mod.name() != identifier:
                continue
            if version and c2str(mod.cdata.revision) != version:
                continue
            path = mod.filepath()
            if path and Path(path).exists():
                return Path(path).read_text()
            return mod.print_mem("yang")
        return None

    def monitoring_state(self) -> str:
        """ietf-netconf-monitoring `netconf-state` (RFC 6022)."""
        caps = "".join(f"<capability>{escape(c)}</capability>" for c in self._hello_caps)
        ds_parts = []
        for ds in (Datastore.RUNNING, Datastore.CANDIDATE):
            holder = self.datastores.locks.get(ds)
            lock = ""
            if holder is not None:
                lock = (f"<locks><global-lock><locked-by-session>{holder}</locked-by-session>"
                        f"<locked-time>{event_time()}</locked-time></global-lock></locks>")
            ds_parts.append(f"<datastore><name>{ds.value}</name>{lock}</datastore>")
        schemas = []
        for mod in self._modules():
            rev = c2str(mod.cdata.revision) or ""
            schemas.append(
                f"<schema><identifier>{mod.name()}</identifier><version>{rev}</version>"
                f"<format>yang</format><namespace>{escape(c2str(mod.cdata.ns) or '')}</namespace>"
                f"<location>NETCONF</location></schema>"
            )
        sessions = []
        for s in self.sessions.values():
            c = s.counters
            sessions.append(
                f"<session><session-id>{s.id}</session-id><transport>netconf-ssh</transport>"
                f"<username>{escape(s.info.username)}</username><source-host>{escape(s.info.source_host)}</source-host>"
                f"<login-time>{s.info.login_time}</login-time><in-rpcs>{c.in_rpcs}</in-rpcs>"
                f"<in-bad-rpcs>{c.in_bad_rpcs}</in-bad-rpcs><out-rpc-errors>{c.out_rpc_errors}</out-rpc-errors>"
                f"<out-notifications>{c.out_notifications}</out-notifications></session>"
            )
        st = self.stats
        stats = (
            f"<statistics><netconf-start-time>{st.start_time}</netconf-start-time>"
            f"<in-bad-hellos>{st.in_bad_hellos}</in-bad-hellos><in-sessions>{st.in_sessions}</in-sessions>"
            f"<dropped-sessions>{st.dropped_sessions}</dropped-sessions><in-rpcs>{st.in_rpcs}</in-rpcs>"
            f"<in-bad-rpcs>{st.in_bad_rpcs}</in-bad-rpcs><out-rpc-errors>{st.out_rpc_errors}</out-rpc-errors>"
            f"<out-notifications>{self.events.sent}</out-notifications></statistics>"
        )
        return (
            f'<netconf-state xmlns="{MONITORING_NS}"><capabilities>{caps}</capabilities>'
            f"<datastores>{''.join(ds_parts)}</datastores><schemas>{''.join(schemas)}</schemas>"
            f"<sessions>{''.join(sessions)}</sessions>{stats}</netconf-state>"
        )

    # -- notifications --------------------------------------------------------------------------
    def _config_changed(self, change: Change) -> None:
        """RFC 6470 netconf-config-change after every commit."""
        session = self.sessions.get(change.session_id)
        who = ""
        if session is not None:
            who = (f"<changed-by><username>{escape(session.info.username)}</username>"
                   f"<session-id>{session.id}</session-id></changed-by>")
        else:
            who = "<changed-by><server/></changed-by>"
        edits = []
        for e in change.edits:
            if e.path == "/":
                edits.append(f"<edit><operation>{e.operation.value}</operation></edit>")
                continue
            path, nsmap = xml_path(self.ctx, e.path)
            decls = "".join(f' xmlns:{p}="{escape(ns)}"' for p, ns in nsmap.items())
            edits.append(f"<edit><target{decls}>{escape(path)}</target><operation>{e.operation.value}</operation></edit>")
        self.events.publish(
            f'<netconf-config-change xmlns="{NC_NOTIFICATIONS_NS}">{who}<datastore>running</datastore>'
            f"{''.join(edits)}</netconf-config-change>"
        )

    def publish(self, content_xml: str) -> None:
        self.events.publish(content_xml)

    # -- sessions -------------------------------------------------------------------------------
    def new_session(self, username: str, peer: str, write: Callable[[bytes], None],
                    close: Callable[[], None]) -> NetconfSession | None:
        if len(self.sessions) >= self.limits.max_sessions:
            self.stats.dropped_sessions += 1
            return None
        sid = self._next_id
        self._next_id += 1
        session = NetconfSession(self, SessionInfo(sid, username, peer), write, close)
        self.sessions[sid] = session
        self.stats.in_sessions += 1
        return session

    def session_ended(self, session: NetconfSession, *, killed: bool) -> None:
        if self.sessions.pop(session.id, None) is None:
            return
        self.events.unsubscribe(session.id)
        self.datastores.release_session(session.id)
        if killed:
            self.stats.dropped_sessions += 1

    def kill_session(self, session_id: int) -> bool:
        session = self.sessions.get(session_id)
        if session is None:
            return False
        self.session_ended(session, killed=True)
        session.close()
        return True

    # -- SSH ------------------------------------------------------------------------------------
    def check_password(self, username: str, password: str) -> bool:
        user = self.users.get(username)
        if user is None or user.password is None:
            return False
        return hmac.compare_digest(user.password.encode(), password.encode())

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        server = self

        class _SSHServer(asyncssh.SSHServer):
            def __init__(self) -> None:
                self._conn: asyncssh.SSHServerConnection | None = None

            def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
                self._conn = conn

            def begin_auth(self, username: str) -> bool:
                user = server.users.get(username)
                if user is not None and user.authorized_keys and self._conn is not None:
                    self._conn.set_authorized_keys(asyncssh.import_authorized_keys("\n".join(user.authorized_keys)))
                return True

            def password_auth_supported(self) -> bool:
                return True

            def validate_password(self, username: str, password: str) -> bool:
                return server.check_password(username, password)

            def public_key_auth_supported(self) -> bool:
                return True

            def session_requested(self) -> asyncssh.SSHServerSession:
                return _NetconfChannel(server)

        self._ssh = await asyncssh.create_server(
            _SSHServer, host, port, server_host_keys=[self.host_key], encoding=None,
            allow_scp=False, keepalive_interval=30,
        )
        sock = self._ssh.sockets[0]
        return int(sock.getsockname()[1])

    async def stop(self) -> None:
        for s in list(self.sessions.values()):
            s.close()
        if self._ssh is not None:
            self._ssh.close()
            await self._ssh.wait_closed()


class _NetconfChannel(asyncssh.SSHServerSession):  # type: ignore[misc]
    """SSH channel carrying the `netconf` subsystem, bridged to a `NetconfSession`."""

    def __init__(self, server: NetconfServer) -> None:
        self.server = server
        self.chan: asyncssh.SSHServerChannel | None = None
        self.session: NetconfSession | None = None

    def connection_made(self, chan: asyncssh.SSHServerChannel) -> None:
        self.chan = chan

    def shell_requested(self) -> bool:
        return False

    def exec_requested(self, command: str) -> bool:
        return False

    def subsystem_requested(self, subsystem: str) -> bool:
        return subsystem == "netconf"

    def session_started(self) -> None:
        assert self.chan is not None
        chan = self.chan
        username = chan.get_extra_info("username") or ""
        peer = chan.get_extra_info("peername") or ("", 0)
        session = self.server.new_session(username, str(peer[0]), chan.write, chan.close)
        if session is None:
            chan.write_stderr(b"too many NETCONF sessions\n")
            chan.exit(1)
            return
        self.session = session
        session.start()

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        if self.session is not None:
            self.session.data_received(data)

    def eof_received(self) -> bool:
        if self.session is not None:
            self.session.close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.session is not None:
            self.session.connection_lost()


def _nacm_subtree(datastores: Any) -> str:
    """The `/nacm` of running as XML (only that subtree: NACM reads it before every RPC)."""
    from ..datatree import print_nodes

    node = datastores.running.find("/ietf-netconf-acm:nacm")
    return print_nodes(node, siblings=False) if node is not None else ""

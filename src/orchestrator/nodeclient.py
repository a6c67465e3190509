"""NETCONF client side (ncclient) shared by the orchestrator and the `qkdnet` tools."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import ncclient.transport.session as _nc_session
from lxml import etree
from ncclient import manager
from ncclient.transport.errors import TransportError

# ncclient's session thread sends a queued RPC only between two polls of its channel, every TICK
# seconds (0.1 as shipped: up to 100 ms per RPC). A short TICK made RPCs fast but turned every idle
# session into a busy loop (at 1 ms, the orchestrator's 100 sessions of a 50-node network took a
# whole core doing nothing). `connect` therefore makes `send` write to the SSH channel directly
# (`_send_directly`): the session thread only reads, and TICK only bounds how soon it notices a
# closed session. The SSH transport thread polls its socket likewise (paramiko: 0.1 s).
_nc_session.TICK = 0.5
_TRANSPORT_POLL_S = 0.5

QKD_NS = "urn:etsi:qkd:yang:etsi-qkd-node"
NS = {"q": QKD_NS}


@dataclass(frozen=True)
class NetconfEndpoint:
    host: str
    port: int
    username: str
    password: str
    host_key: str | None = None  # base64 of the node's SSH host public key: pinned when given

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "NetconfEndpoint":
        return cls(d["host"], int(d["port"]), d["username"], d["password"], d.get("host_key"))


def connect(ep: NetconfEndpoint, timeout: float = 10.0) -> manager.Manager:
    # With `host_key` the server must present exactly that key; without one (a lab inventory
    # written by hand) the key is not checked: production inventories carry host keys.
    m = manager.connect(
        host=ep.host, port=ep.port, username=ep.username, password=ep.password,
        hostkey_verify=ep.host_key is not None, hostkey_b64=ep.host_key,
        look_for_keys=False, allow_agent=False, timeout=timeout,
    )
    _send_directly(m)
    return m


def _send_directly(m: manager.Manager) -> None:
    """Frame and write each message on the caller's thread (paramiko channels may be written from
    one thread while another reads), instead of queueing it for ncclient's session thread."""
    session = m._session
    channel = getattr(session, "_channel", None)
    needed = (hasattr(session, "_base"), hasattr(_nc_session, "NetconfBase"), hasattr(_nc_session, "END_DELIM"),
              hasattr(_nc_session, "MSG_DELIM"), hasattr(channel, "sendall"))
    if channel is None or not all(needed):  # not an SSH session, or another ncclient: keep its own queue
        _nc_session.TICK = min(_nc_session.TICK, 0.01)  # then RPCs wait for its poll: keep that short
        return
    lock = threading.Lock()

    def send(message: str) -> None:
        if not session.connected:
            raise TransportError("Not connected to NETCONF server")
        data = message.encode()
        if session._base == _nc_session.NetconfBase.BASE_11:
            data = b"\n#%d\n%s%s" % (len(data), data, _nc_session.END_DELIM)
        else:
            data += _nc_session.MSG_DELIM
        with lock:
            channel.sendall(data)

    session.send = send
    transport = getattr(session, "_transport", None)
    sock = getattr(transport, "sock", None)
    if sock is not None and hasattr(sock, "settimeout"):
        sock.settimeout(_TRANSPORT_POLL_S)


def local(el: etree._Element, path: str) -> str | None:
    found = el.find(path, NS)
    return None if found is None or found.text is None else found.text.strip()


@dataclass
class NodeSummary:
    node_id: str | None
    status: str | None
    interfaces: int
    links: int
    virt_links: int
    skr_bps: int = 0  # sum of the PHYS links' secret key rates (015 qkdl_performance/skr)


def node_summary(m: manager.Manager) -> NodeSummary:
    flt = f'<qkd_node xmlns="{QKD_NS}"/>'
    data = m.get(filter=("subtree", flt)).data_ele
    node = data.find("q:qkd_node", NS)
    if node is None:
        return NodeSummary(None, None, 0, 0, 0)
    links = node.findall("q:qkd_links/q:qkd_link", NS)
    virt = [ln for ln in links if (local(ln, "q:qkdl_type") or "").endswith("VIRT")]
    return NodeSummary(
        node_id=local(node, "q:qkdn_id"),
        status=(local(node, "q:qkdn_status") or "").split(":")[-1] or None,
        interfaces=len(node.findall("q:qkd_interfaces/q:qkd_interface", NS)),
        links=len(links) - len(virt),
        virt_links=len(virt),
        skr_bps=sum(int(local(ln, "q:qkdl_performance/q:skr") or 0) for ln in links if ln not in virt),
    )

"""netconf-console2 (the CLI, as a subprocess) against a real node.

netconf-console2 3.0.1 always negotiates base:1.1: its `-v/--version` option ("force NETCONF
version 1.0 or 1.1") is accepted but ignored (marked FIXME in its source), and it has no other
way to offer only base:1.0. So it is run in chunked framing only, which the node's own record
of each session's framing confirms; end-of-message framing is covered by the raw base:1.0
client of test_netconf_framing.py. The node's host key is pinned through an OpenSSH config file
(`--hostkey-verify --ssh-config`).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from conftest import (
    MONITORING_NS,
    NSMAP,
    QKD_NS,
    QKD_TYPES_NS,
    VENV_BIN,
    close_quietly,
    env_with_venv,
    link_ids,
    nc_connect,
    new_uuid,
)

pytestmark = pytest.mark.timeout(60)

NC_CONSOLE = str(VENV_BIN / "netconf-console2") if (VENV_BIN / "netconf-console2").exists() else shutil.which(
    "netconf-console2"
)
if NC_CONSOLE is None:  # pragma: no cover - it is a test dependency of the project
    pytest.skip("netconf-console2 is not installed", allow_module_level=True)


class Console:
    def __init__(self, node: Any, tmp_path: Path) -> None:
        self.node = node
        self.tmp = tmp_path
        known_hosts = tmp_path / "known_hosts"
        known_hosts.write_text(f"[{node.host}]:{node.port} ssh-ed25519 {node.host_key_b64}\n")
        self.ssh_config = tmp_path / "ssh_config"
        self.ssh_config.write_text(f"Host *\n  UserKnownHostsFile {known_hosts}\n")
        self.framings: list[str] = []
        node.call(lambda: setattr(node.node.netconf, "after_reply", lambda s: self.framings.append(s.framing.value)))

    def run(self, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [NC_CONSOLE, "--host", self.node.host, "--port", str(self.node.port), "-u", self.node.username,
               "-p", self.node.password, "--hostkey-verify", "--ssh-config", str(self.ssh_config)]
        proc = subprocess.run([*cmd, *args], capture_output=True, text=True, input=stdin, timeout=30,
                              env=env_with_venv(), cwd=self.tmp)
        if check:
            assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr)
        return proc

    def xml_docs(self, out: str) -> list[etree._Element]:
        """netconf-console2 prints one XML document per reply."""
        docs = [d for d in out.split("<?xml version='1.0' encoding='UTF-8'?>") if d.strip()]
        return [etree.fromstring(d.strip().encode()) for d in docs]


@pytest.fixture
def console(node: Any, tmp_path: Path) -> Console:
    return Console(node, tmp_path)


def _write_edit(tmp: Path, lid: str, wavelength: str = "21") -> Path:
    f = tmp / f"edit-{lid}.xml"
    f.write_text(
        f'<qkd_node xmlns="{QKD_NS}">\n  <qkd_links>\n    <qkd_link>\n      <qkdl_id>{lid}</qkdl_id>\n'
        f'      <qkdl_type xmlns:t="{QKD_TYPES_NS}">t:PHYS</qkdl_type>\n'
        f"      <phys_wavelength>{wavelength}</phys_wavelength>\n    </qkd_link>\n  </qkd_links>\n</qkd_node>\n"
    )
    return f


def _running_links(node: Any) -> set[str]:
    m = nc_connect(node)
    try:
        return link_ids(m.get_config("running").data_ele)
    finally:
        close_quietly(m)


def test_hello(console: Console) -> None:
    out = console.run("--hello").stdout
    (hello,) = console.xml_docs(out)  # netconf-console2 prints the capabilities, not the session-id
    caps = {c.text for c in hello.iterfind(".//nc:capability", NSMAP)}
    assert "urn:ietf:params:netconf:base:1.0" in caps
    assert "urn:ietf:params:netconf:base:1.1" in caps
    assert "urn:ietf:params:netconf:capability:candidate:1.0" in caps
    assert any(c.startswith(f"{QKD_NS}?module=etsi-qkd-sdn-node") for c in caps)


def test_get_config(node: Any, console: Console) -> None:
    out = console.run("--get-config").stdout
    (data,) = console.xml_docs(out)
    assert data.findtext("q:qkd_node/q:qkdn_id", namespaces=NSMAP) == node.node.node_id
    assert data.findtext("q:qkd_node/q:qkdn_location_id", namespaces=NSMAP) == "n1-site"
    assert set(console.framings) == {"chunked"}  # get-config and close-session


def test_edit_config_file_and_commit(node: Any, console: Console) -> None:
    lid = new_uuid()
    out = console.run("--db", "candidate", "--edit-config", str(_write_edit(console.tmp, lid)), "--commit").stdout
    replies = console.xml_docs(out)
    assert [etree.QName(r).localname for r in replies] == ["ok", "ok"]
    assert lid in _running_links(node)
    # and read back through netconf-console2 with an XPath filter
    out = console.run("--get-config", "-x", f"/qkd_node/qkd_links/qkd_link[qkdl_id='{lid}']/phys_wavelength").stdout
    (data,) = console.xml_docs(out)
    assert data.findtext(".//q:qkd_link/q:phys_wavelength", namespaces=NSMAP) == "21"


def test_get_with_xpath_and_defaults(node: Any, console: Console) -> None:
    (data,) = console.xml_docs(console.run("--get", "-x", "/qkd_node/qkdn_status").stdout)
    status = data.find("q:qkd_node/q:qkdn_status", NSMAP)
    prefix, _, name = status.text.partition(":")
    assert (status.nsmap[prefix], name) == (QKD_TYPES_NS, "OPERATING")
    assert data.find("q:qkd_node/q:qkdn_id", NSMAP) is None
    lid = new_uuid()
    console.run("--db", "candidate", "--edit-config", str(_write_edit(console.tmp, lid)), "--commit")
    xp = f"/qkd_node/qkd_links/qkd_link[qkdl_id='{lid}']"
    (explicit,) = console.xml_docs(console.run("--get-config", "-x", xp).stdout)
    (all_,) = console.xml_docs(console.run("--get-config", "--with-defaults", "report-all", "-x", xp).stdout)
    assert explicit.find(".//q:qkdl_enable", NSMAP) is None
    assert all_.findtext(".//q:qkdl_enable", namespaces=NSMAP) == "true"


def test_set_and_test_only(node: Any, console: Console) -> None:
    lid = new_uuid()
    console.run("--db", "candidate", "--edit-config", str(_write_edit(console.tmp, lid)), "--commit")
    path = f"/q:qkd_node/q:qkd_links/q:qkd_link[q:qkdl_id='{lid}']/q:phys_wavelength"
    console.run("--ns", f"q={QKD_NS}", "--db", "candidate", "--set", f"{path}=44", "--commit")
    console.run("--db", "candidate", "--edit-config", str(_write_edit(console.tmp, lid, "55")), "-t", "test-only")
    m = nc_connect(node)
    try:
        for ds in ("running", "candidate"):
            data = m.get_config(ds).data_ele
            assert data.findtext(".//q:qkd_link/q:phys_wavelength", namespaces=NSMAP) == "44", ds
    finally:
        close_quietly(m)


def test_edit_error_is_reported(node: Any, console: Console) -> None:
    lid = new_uuid()
    proc = console.run("--db", "candidate", "--edit-config", str(_write_edit(console.tmp, lid, "0")), "--commit",
                       check=False)
    assert proc.returncode != 0
    (err,) = console.xml_docs(proc.stdout + proc.stderr) or [None]
    assert err.findtext("nc:error-tag", namespaces=NSMAP) == "invalid-value"
    assert "phys_wavelength" in err.findtext("nc:error-path", namespaces=NSMAP)
    assert lid not in _running_links(node)


def test_lock_validate_discard_and_schema(node: Any, console: Console) -> None:
    out = console.run("--db", "candidate", "--lock", "--validate", "candidate", "--discard-changes",
                      "--unlock").stdout
    assert [etree.QName(r).localname for r in console.xml_docs(out)] == ["ok"] * 4
    (schema,) = console.xml_docs(console.run("--get-schema", "etsi-qkd-sdn-node").stdout)
    assert etree.QName(schema) == etree.QName(MONITORING_NS, "data")
    assert "module etsi-qkd-sdn-node" in schema.text


def test_wrong_host_key_is_refused(node: Any, console: Console) -> None:
    (console.tmp / "known_hosts").write_text(
        f"[{node.host}]:{node.port} ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n"
    )
    proc = console.run("--get-config", check=False)
    assert proc.returncode != 0
    assert "host key" in (proc.stdout + proc.stderr).lower()
    assert console.framings == []

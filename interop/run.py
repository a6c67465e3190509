#!/usr/bin/env python3
"""Interop suite: start a network with `qkdnet up` and drive one node ONLY through its interfaces,
with software this project did not write (versions pinned in interop/requirements.txt):

* ncclient: every NETCONF operation, in both framings (base:1.1 chunked and base:1.0 end-of-message)
* netconf-console2: every operation it offers (it always negotiates base:1.1)
* yanglint: the modules the node serves compile, and the data it serves validate against the
  official ETSI GS QKD 015 modules in ../shared/reference/ (three `when` expressions prefixed)
* curl: RESTCONF (HTTP Basic and client certificate) and ETSI GS QKD 014 with SAE client certificates
* etsi-qkd-014-client (PyPI): an independent ETSI 014 client

Imports nothing from src/. Prints every command and result; ends with `N passed, M failed`.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote

from lxml import etree

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
REFERENCE = REPO.parent / "shared" / "reference"
QKD = "etsi-qkd-sdn-node"
QKD_NS = "urn:etsi:qkd:yang:etsi-qkd-node"
TYPES_NS = "urn:etsi:qkd:yang:etsi-qkd-node-types"
NC_NS = "urn:ietf:params:xml:ns:netconf:base:1.0"
WHEN_FIXES = (("qkdl_type = 'VIRT'", "qkdl_type = 'etsi-qkdn-types:VIRT'"),
              ("qkdl_type = 'PHYS'", "qkdl_type = 'etsi-qkdn-types:PHYS'"))

passed: list[str] = []
failed: list[str] = []
skipped: list[str] = []


class Skip(Exception):
    pass


def check(name: str, fn: Callable[[], str | None]) -> None:
    print(f"\n== {name}", flush=True)
    try:
        detail = fn()
    except Skip as exc:
        skipped.append(name)
        print(f"SKIP {name}: {exc}", flush=True)
        return
    except Exception as exc:  # each check reports its own failure; the suite goes on
        failed.append(name)
        print(f"FAIL {name}: {type(exc).__name__}: {exc}", flush=True)
        if os.environ.get("INTEROP_DEBUG"):
            traceback.print_exc()
        return
    passed.append(name)
    print(f"PASS {name}" + (f": {detail}" if detail else ""), flush=True)


def run(cmd: list[str], *, ok: tuple[int, ...] = (0,), input: str | None = None, timeout: float = 60,
        show: int = 400) -> subprocess.CompletedProcess[str]:
    print("$ " + shlex.join(cmd), flush=True)
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    proc = subprocess.run(cmd, capture_output=True, text=True, input=input, timeout=timeout, env=env)
    out = (proc.stdout + proc.stderr).strip()
    if out:
        print("  " + (out[:show] + (" ..." if len(out) > show else "")).replace("\n", "\n  "), flush=True)
    if proc.returncode not in ok:
        raise AssertionError(f"exit status {proc.returncode}")
    return proc


def expect(cond: bool, what: str) -> None:
    if not cond:
        raise AssertionError(what)


def tool(name: str) -> str:
    p = BIN / name
    if p.exists():
        return str(p)
    found = shutil.which(name)
    if found is None:
        raise Skip(f"{name} is not installed")
    return found


# -- the network ----------------------------------------------------------------------------------
class Network:
    def __init__(self, state: Path) -> None:
        self.state = state
        self.proc: subprocess.Popen[bytes] | None = None
        self.data: dict[str, Any] = {}

    def up(self, timeout: float = 120) -> None:
        cmd = [tool("qkdnet"), "up", "--topology", str(REPO / "examples" / "two-nodes.yaml"),
               "--state-dir", str(self.state), "--duration", "600"]
        print("$ " + shlex.join(cmd), flush=True)
        self.log = open(self.state.parent / "qkdnet-up.log", "wb")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        path = self.state / "network.json"
        while not path.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"qkdnet up did not start (see {self.state.parent / 'qkdnet-up.log'})")
            time.sleep(0.2)
        self.data = json.loads(path.read_text())

    def down(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)

    def node(self, name: str) -> dict[str, Any]:
        return self.data["nodes"][name]


def issue_user_cert(pki: Path, user: str, out: Path) -> tuple[Path, Path]:
    """A client certificate with CN=user from the network's lab CA, made with openssl."""
    key, csr, cert, ext = out / f"{user}.key", out / f"{user}.csr", out / f"{user}.pem", out / f"{user}.ext"
    ext.write_text("extendedKeyUsage=clientAuth\nbasicConstraints=critical,CA:FALSE\n")
    run(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(key)])
    run(["openssl", "req", "-new", "-key", str(key), "-subj", f"/CN={user}", "-out", str(csr)])
    run(["openssl", "x509", "-req", "-in", str(csr), "-CA", str(pki / "ca.pem"), "-CAkey", str(pki / "ca.key"),
         "-CAcreateserial", "-days", "1", "-sha256", "-extfile", str(ext), "-out", str(cert)])
    return cert, key


def link_xml(lid: str, op: str | None = None) -> str:
    attr = f' xmlns:nc="{NC_NS}" nc:operation="{op}"' if op else ""
    body = "" if op == "delete" else (
        f'<qkdl_enable>true</qkdl_enable><qkdl_type xmlns:t="{TYPES_NS}">t:PHYS</qkdl_type>'
        "<phys_channel_att>3.5</phys_channel_att><phys_wavelength>20</phys_wavelength>")
    return (f'<qkd_node xmlns="{QKD_NS}"><qkd_links><qkd_link{attr}><qkdl_id>{lid}</qkdl_id>{body}'
            "</qkd_link></qkd_links></qkd_node>")


# -- the checks -----------------------------------------------------------------------------------
class Suites:
    def __init__(self, net: Network, work: Path) -> None:
        self.net, self.work = net, work
        self.alice, self.bob = net.node("alice"), net.node("bob")
        self.nc = self.alice["netconf"]
        self.pki = net.state / "pki"
        self.ca = str(self.pki / "ca.pem")
        self.rc = self.alice["restconf"]["url"]
        known = work / "known_hosts"
        known.write_text(f"[{self.nc['host']}]:{self.nc['port']} ssh-ed25519 {self.nc['host_key']}\n")
        self.ssh_config = work / "ssh_config"
        self.ssh_config.write_text(f"Host *\n  UserKnownHostsFile {known}\n")

    def all(self) -> None:
        for n in (1.1, 1.0):
            check(f"ncclient base:{n}: hello, get, get-config (subtree, xpath, with-defaults), lock, edit-config, "
                  "validate, commit, discard-changes, copy-config, unlock", lambda n=n: self.ncclient_ops(n))
        check("ncclient: get-schema, create-subscription + netconf-config-change, kill-session, close-session",
              self.ncclient_more)
        check("netconf-console2 (base:1.1): hello, get, get-config, with-defaults, get-schema", self.console_read)
        check("netconf-console2: lock, edit-config, validate, commit, discard-changes, copy-config, unlock, "
              "kill-session", self.console_write)
        check("yanglint: the modules the node serves (<get-schema>) compile", self.yanglint_served)
        check("yanglint: served data (NETCONF XML, RESTCONF JSON) valid against the official ETSI 015 modules",
              self.yanglint_official)
        check("curl RESTCONF discovery: host-meta, root, yang-library-version, yang-library, operations, "
              "yang module", self.curl_discovery)
        check("curl RESTCONF (Basic): GET JSON/XML, PUT, PATCH, POST, DELETE and their errors", self.curl_data)
        check("curl RESTCONF: client certificate CN=admin; no, wrong or unknown credentials refused",
              self.curl_auth)
        check("RESTCONF and NETCONF share one datastore (curl write seen by ncclient and back)", self.cross)
        check("curl ETSI 014 with SAE client certificates: status, enc_keys, dec_keys", self.curl_014)
        check("etsi-qkd-014-client (PyPI): get_status, get_key, get_key_with_key_IDs", self.pypi_014)

    # -- ncclient -----------------------------------------------------------------------------
    def connect(self, base: float = 1.1) -> Any:
        from ncclient import manager
        from ncclient.devices.default import DefaultDeviceHandler

        class Base10(DefaultDeviceHandler):  # offer base:1.0 only: end-of-message framing
            def get_capabilities(self) -> list[str]:
                return [c for c in super().get_capabilities() if c != "urn:ietf:params:netconf:base:1.1"]

        params: dict[str, Any] = {}
        if base == 1.0:
            params["device_params"] = {"handler": Base10}
        print(f"$ ncclient.manager.connect(host={self.nc['host']}, port={self.nc['port']}, hostkey pinned, "
              f"base:{base})", flush=True)
        return manager.connect(host=self.nc["host"], port=self.nc["port"], username=self.nc["username"],
                               password=self.nc["password"], hostkey_verify=True, hostkey_b64=self.nc["host_key"],
                               look_for_keys=False, allow_agent=False, timeout=20, **params)

    def ncclient_ops(self, base: float) -> str:
        lid = str(uuid.uuid4())
        cfg = f'<config xmlns="{NC_NS}">{link_xml(lid)}</config>'
        with self.connect(base) as m:
            from ncclient.transport.session import NetconfBase

            framing = "chunked" if m._session._base == NetconfBase.BASE_11 else "end-of-message"  # noqa: SLF001
            expect(framing == ("chunked" if base == 1.1 else "end-of-message"), f"framing is {framing}")
            expect(any(":candidate" in c for c in m.server_capabilities), "no :candidate capability")
            node = m.get(filter=("subtree", f'<qkd_node xmlns="{QKD_NS}"/>')).data_xml
            expect("qkdn_status" in node, "get has no qkdn_status")
            xp = m.get_config(source="running", filter=("xpath", ({"q": QKD_NS}, "/q:qkd_node/q:qkdn_id"))).data_xml
            expect("qkdn_id" in xp and "qkd_links" not in xp, "xpath filter not applied")
            wd = m.get_config(source="running", with_defaults="report-all").data_xml
            expect("qkd_node" in wd, "with-defaults get-config")
            m.lock("candidate")
            m.edit_config(target="candidate", config=cfg)
            m.validate(source="candidate")
            m.commit()
            expect(lid in m.get_config(source="running").data_xml, "committed link missing")
            m.edit_config(target="candidate", config=f'<config xmlns="{NC_NS}">{link_xml(lid, "delete")}</config>')
            m.discard_changes()
            expect(lid in m.get_config(source="candidate").data_xml, "discard-changes did not restore")
            m.copy_config(source="running", target="candidate")
            m.edit_config(target="candidate", config=f'<config xmlns="{NC_NS}">{link_xml(lid, "delete")}</config>')
            m.commit()
            m.unlock("candidate")
            expect(lid not in m.get_config(source="running").data_xml, "deleted link still there")
        return f"{framing} framing, link {lid} created and deleted"

    def ncclient_more(self) -> str:
        victim = self.connect(1.0)
        with self.connect() as sub, self.connect() as writer:
            text = sub.get_schema(QKD).data
            expect(f"module {QKD}" in text, "get-schema returned no module")
            sub.create_subscription()
            lid = str(uuid.uuid4())
            writer.edit_config(target="candidate", config=f'<config xmlns="{NC_NS}">{link_xml(lid)}</config>')
            writer.commit()
            # the node also sends its own events (sdqkdn_link_perf_update every few seconds): skip those
            deadline = time.monotonic() + 10
            n = None
            while time.monotonic() < deadline:
                n = sub.take_notification(timeout=max(0.1, deadline - time.monotonic()))
                if n is not None and "netconf-config-change" in n.notification_xml:
                    break
            expect(n is not None and "netconf-config-change" in n.notification_xml and lid in n.notification_xml,
                   "no netconf-config-change")
            writer.edit_config(target="candidate", config=f'<config xmlns="{NC_NS}">{link_xml(lid, "delete")}</config>')
            writer.commit()
            writer.kill_session(victim.session_id)
            deadline = time.monotonic() + 5
            while victim.connected and time.monotonic() < deadline:
                time.sleep(0.1)
            expect(not victim.connected, "killed session still connected")
        # close-session of the two others happened on leaving the block; one more, explicitly
        m = self.connect()
        m.close_session()
        expect(not m.connected, "close-session left the session open")
        return f"schema {len(text)} chars, notification for {lid}, kill-session, close-session"

    # -- netconf-console2 ---------------------------------------------------------------------
    def console(self, *args: str, ok: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess[str]:
        cmd = [tool("netconf-console2"), "--host", self.nc["host"], "--port", str(self.nc["port"]),
               "-u", self.nc["username"], "-p", self.nc["password"], "--hostkey-verify",
               "--ssh-config", str(self.ssh_config), *args]
        return run(cmd, ok=ok)

    def console_read(self) -> str:
        hello = self.console("--hello").stdout
        expect("urn:ietf:params:netconf:base:1.1" in hello, "hello lacks base:1.1")
        expect("qkdn_status" in self.console("--get").stdout, "get")
        expect("qkd_node" in self.console("--get-config").stdout, "get-config")
        expect("qkd_node" in self.console("--with-defaults", "report-all", "--get-config").stdout, "with-defaults")
        expect(f"module {QKD}" in self.console("--get-schema", QKD).stdout, "get-schema")
        return "5 operations"

    def console_write(self) -> str:
        lid = str(uuid.uuid4())
        f = self.work / "edit.xml"
        f.write_text(link_xml(lid))
        self.console("--db", "candidate", "--lock", "--edit-config", str(f), "--validate", "candidate", "--commit",
                     "--unlock")
        expect(lid in self.console("--get-config").stdout, "link not committed")
        d = self.work / "delete.xml"
        d.write_text(link_xml(lid, "delete"))
        self.console("--db", "candidate", "--edit-config", str(d), "--discard-changes")
        expect(lid in self.console("--get-config").stdout, "discard-changes")
        full = self.work / "copy.xml"
        # netconf-console2 puts exactly one element into <config>: the qkd_node subtree (running also
        # holds /nacm, the tapi context: copied into the candidate without them, then discarded)
        data = etree.fromstring(self.console("--get-config").stdout.encode())
        node = data.find("{urn:etsi:qkd:yang:etsi-qkd-node}qkd_node")
        expect(node is not None, "no qkd_node in get-config")
        full.write_bytes(etree.tostring(node))
        self.console("--db", "candidate", "--copy-config", str(full), "--discard-changes")
        self.console("--db", "candidate", "--edit-config", str(d), "--commit")
        expect(lid not in self.console("--get-config").stdout, "delete")
        out = self.console("--kill-session", "4000000000", ok=(0, 1, 255))
        expect("rpc-error" in out.stdout + out.stderr, "kill-session of no session was not refused")
        return f"link {lid} created, discarded, deleted"

    # -- yanglint -----------------------------------------------------------------------------
    def fetch_modules(self) -> Path:
        d = self.work / "served"
        if d.exists():
            return d
        d.mkdir()
        with self.connect() as m:
            names = re.findall(r"<identifier>([^<]+)</identifier>",
                               m.get(filter=("subtree", '<netconf-state xmlns="urn:ietf:params:xml:ns:yang:'
                                                        'ietf-netconf-monitoring"><schemas/></netconf-state>')).data_xml)
            for name in sorted(set(names)):
                (d / f"{name}.yang").write_text(m.get_schema(name).data)
        print(f"  fetched {len(list(d.glob('*.yang')))} modules over <get-schema>", flush=True)
        return d

    def yanglint_served(self) -> str:
        d = self.fetch_modules()
        mods = [str(d / f"{n}.yang") for n in (QKD, "etsi-qkd-node-types", "qkdnet-etsi-qkd-sdn-node-deviations")
                if (d / f"{n}.yang").exists()]
        run([tool("yanglint"), "-p", str(d), *mods])
        tapi = sorted(str(p) for p in d.glob("tapi-*.yang"))
        if tapi:
            run([tool("yanglint"), "-p", str(d), *tapi])
        return f"{len(mods) + len(tapi)} modules compile"

    def yanglint_official(self) -> str:
        ref = REFERENCE / "etsi-qkd-015"
        if not ref.exists():
            raise Skip(f"{ref} is absent (the official modules live in ../shared/reference)")
        off = self.work / "official"
        off.mkdir(exist_ok=True)
        for p in ref.glob("*.yang"):
            text = p.read_text()
            for a, b in WHEN_FIXES:
                text = text.replace(a, b)
            (off / p.name).write_text(text)
        mods = [str(off / "etsi-qkd-sdn-node.yang"), str(off / "etsi-qkd-node-types.yang")]
        with self.connect() as m:
            cfg = m.get_config(source="running", filter=("subtree", f'<qkd_node xmlns="{QKD_NS}"/>')).data_ele
            state = m.get(filter=("subtree", f'<qkd_node xmlns="{QKD_NS}"/>')).data_ele

        for name, ele, kind in (("config.xml", cfg, "config"), ("state.xml", state, "data")):
            node = ele.find(f"{{{QKD_NS}}}qkd_node")
            expect(node is not None, f"no qkd_node in {name}")
            (self.work / name).write_bytes(etree.tostring(node))
            run([tool("yanglint"), "-t", kind, "-p", str(off), *mods, str(self.work / name)])
        code, body = self.curl("GET", f"/data/{QKD}:qkd_node?content=config")
        expect(code == 200, f"RESTCONF GET {code}")
        (self.work / "restconf.json").write_text(body)
        run([tool("yanglint"), "-t", "config", "-p", str(off), *mods, str(self.work / "restconf.json")])
        return "running (config), operational (data) and RESTCONF JSON valid"

    # -- curl: RESTCONF -----------------------------------------------------------------------
    def curl(self, method: str, path: str, body: str | None = None, *, ctype: str = "json",
             accept: str = "application/yang-data+json", user: tuple[str, str] | None = ("admin", "admin"),
             cert: tuple[Path, Path] | None = None, base: str | None = None) -> tuple[int, str]:
        out = self.work / "curl.out"
        cmd = [tool("curl"), "-sS", "--cacert", self.ca, "-X", method, "-H", f"Accept: {accept}",
               "-o", str(out), "-w", "%{http_code}"]
        if user is not None:
            cmd += ["-u", f"{user[0]}:{user[1]}"]
        if cert is not None:
            cmd += ["--cert", str(cert[0]), "--key", str(cert[1])]
        if body is not None:
            cmd += ["-H", f"Content-Type: application/yang-data+{ctype}", "--data-binary", body]
        cmd.append((base or self.rc) + path)
        proc = run(cmd, show=120)
        text = out.read_text() if out.exists() else ""
        print(f"  -> {proc.stdout.strip()} {text[:200]}", flush=True)
        return int(proc.stdout.strip() or 0), text

    def curl_discovery(self) -> str:
        root = self.rc.rsplit("/restconf", 1)[0]
        code, xrd = self.curl("GET", "/.well-known/host-meta", user=None, base=root)
        expect(code == 200 and 'rel="restconf"' in xrd, "host-meta")
        code, body = self.curl("GET", "")
        expect(code == 200 and "ietf-restconf:restconf" in body, "root")
        code, body = self.curl("GET", "/yang-library-version")
        expect(json.loads(body) == {"ietf-restconf:yang-library-version": "2019-01-04"}, "yang-library-version")
        code, body = self.curl("GET", "/data/ietf-yang-library:yang-library")
        expect(code == 200 and QKD in body, "yang-library")
        code, body = self.curl("GET", "/operations")
        expect(code == 200 and "ietf-netconf:commit" in body, "operations")
        code, body = self.curl("GET", f"/yang/{QKD}")
        expect(code == 200 and f"module {QKD}" in body, "yang module")
        return "6 resources"

    def curl_data(self) -> str:
        lid = str(uuid.uuid4())
        url = f"/data/{QKD}:qkd_node/qkd_links/qkd_link={quote(lid, safe='')}"
        link = {f"{QKD}:qkd_link": [{"qkdl_id": lid, "qkdl_type": "etsi-qkd-node-types:PHYS",
                                      "phys_channel_att": "3.5", "phys_wavelength": "20"}]}
        code, body = self.curl("GET", f"/data/{QKD}:qkd_node")
        expect(code == 200 and f'"{QKD}:qkd_node"' in body, "GET JSON")
        code, body = self.curl("GET", f"/data/{QKD}:qkd_node/qkdn_id", accept="application/yang-data+xml")
        expect(code == 200 and body.startswith("<qkdn_id"), "GET XML")
        expect(self.curl("PUT", url, json.dumps(link))[0] == 201, "PUT create -> 201")
        expect(self.curl("PATCH", url, json.dumps({f"{QKD}:qkd_link": [{"qkdl_id": lid, "qkdl_enable": False}]}))[0]
               == 204, "PATCH -> 204")
        code, body = self.curl("GET", url + "?content=config")
        expect('"qkdl_enable": false' in body.replace('":false', '": false'), "PATCH not applied")
        code, body = self.curl("POST", f"/data/{QKD}:qkd_node/qkd_links", json.dumps(link))
        expect(code == 409 and "data-exists" in body, "POST existing -> 409 data-exists")
        bad = json.dumps({f"{QKD}:qkd_link": [{"qkdl_id": lid, "qkdl_enable": "maybe"}]})
        code, body = self.curl("PUT", url, bad)
        expect(code == 400 and "invalid-value" in body and "error-path" in body, "invalid value -> 400")
        xml = link_xml(lid).split("<qkd_link>", 1)[1].rsplit("</qkd_link>", 1)[0]
        code, _ = self.curl("PUT", url, f'<qkd_link xmlns="{QKD_NS}">{xml}</qkd_link>', ctype="xml")
        expect(code == 204, "PUT replace (XML body) -> 204")
        expect(self.curl("DELETE", url)[0] == 204, "DELETE -> 204")
        code, body = self.curl("DELETE", url, accept="application/yang-data+xml")
        expect(code == 404 and "<error-tag>data-missing</error-tag>" in body, "DELETE missing -> 404 (XML errors)")
        lid2 = str(uuid.uuid4())
        link["etsi-qkd-sdn-node:qkd_link"][0]["qkdl_id"] = lid2
        code, _ = self.curl("POST", f"/data/{QKD}:qkd_node/qkd_links", json.dumps(link))
        expect(code == 201, "POST create -> 201")
        expect(self.curl("DELETE", f"/data/{QKD}:qkd_node/qkd_links/qkd_link={lid2}")[0] == 204, "DELETE")
        return "GET/PUT/PATCH/POST/DELETE and 400/404/409"

    def curl_auth(self) -> str:
        cert = issue_user_cert(self.pki, "admin", self.work)
        path = f"/data/{QKD}:qkd_node/qkdn_id"
        expect(self.curl("GET", path, user=None, cert=cert)[0] == 200, "client certificate refused")
        expect(self.curl("GET", path, user=None)[0] == 401, "no credentials -> 401")
        expect(self.curl("GET", path, user=("admin", "wrong"))[0] == 401, "wrong password -> 401")
        sae = self.net.data["saes"]["sae-alice"]
        expect(self.curl("GET", path, user=None, cert=(Path(sae["cert"]), Path(sae["key"])))[0] == 401,
               "a certificate whose CN is no user -> 401")
        return "cert and Basic accepted, 3 refusals"

    def cross(self) -> str:
        lid = str(uuid.uuid4())
        url = f"/data/{QKD}:qkd_node/qkd_links/qkd_link={lid}"
        link = {f"{QKD}:qkd_link": [{"qkdl_id": lid, "qkdl_type": "etsi-qkd-node-types:PHYS"}]}
        with self.connect() as m:
            m.create_subscription()
            expect(self.curl("PUT", url, json.dumps(link))[0] == 201, "PUT")
            n = m.take_notification(timeout=10)
            expect(n is not None and lid in n.notification_xml, "no netconf-config-change for the RESTCONF write")
            expect(lid in m.get_config(source="running").data_xml, "RESTCONF write not seen over NETCONF")
            with m.locked("candidate"):
                code, body = self.curl("DELETE", url)
                expect(code == 409 and "in-use" in body, "write under a NETCONF lock -> 409 in-use")
            m.edit_config(target="candidate", config=f'<config xmlns="{NC_NS}">{link_xml(lid, "delete")}</config>')
            m.commit()
        expect(self.curl("GET", url)[0] == 404, "NETCONF delete not seen over RESTCONF")
        return "both directions, notification, lock"

    # -- ETSI 014 -----------------------------------------------------------------------------
    def sae(self, name: str) -> tuple[str, str, str]:
        s = self.net.data["saes"][name]
        return s["cert"], s["key"], s["ca"]

    def curl_014(self) -> str:
        a_url, b_url = self.alice["etsi014"]["url"], self.bob["etsi014"]["url"]

        def call(url: str, sae: str, body: str | None = None) -> tuple[int, str]:
            cert, key, ca = self.sae(sae)
            out = self.work / "014.json"
            cmd = [tool("curl"), "-sS", "--cacert", ca, "--cert", cert, "--key", key, "-o", str(out),
                   "-w", "%{http_code}"]
            if body is not None:
                cmd += ["-H", "Content-Type: application/json", "--data-binary", body]
            proc = run([*cmd, url], show=80)
            text = out.read_text()
            masked = re.sub(r'"key": ?"[^"]+"', '"key": "..."', text)  # key bytes are not printed
            print(f"  -> {proc.stdout} {masked[:200]}", flush=True)
            return int(proc.stdout), text

        code, body = call(f"{a_url}/api/v1/keys/sae-bob/status", "sae-alice")
        expect(code == 200 and "stored_key_count" in body, "status")
        deadline = time.monotonic() + 45
        while True:
            code, body = call(f"{a_url}/api/v1/keys/sae-bob/enc_keys", "sae-alice", '{"number": 1, "size": 256}')
            if code == 200 or time.monotonic() > deadline:
                break
            time.sleep(2)
        expect(code == 200, f"enc_keys {code}")
        key = json.loads(body)["keys"][0]
        code, body = call(f"{b_url}/api/v1/keys/sae-alice/dec_keys", "sae-bob",
                          json.dumps({"key_IDs": [{"key_ID": key["key_ID"]}]}))
        expect(code == 200 and json.loads(body)["keys"][0]["key"] == key["key"], "dec_keys: not the same key")
        code, _ = call(f"{a_url}/api/v1/keys/sae-alice/enc_keys", "sae-bob", '{"number": 1}')
        expect(code == 401, "an SAE of another KME -> 401")
        self.key_id = key["key_ID"]
        return f"key {key['key_ID']} delivered to both SAEs"

    def pypi_014(self) -> str:
        try:
            from etsi_qkd_014_client import QKD014Client
        except ImportError:
            raise Skip("etsi-qkd-014-client is not installed (make interop installs interop/requirements.txt)")
        host = lambda n: n["etsi014"]["url"].split("://", 1)[1]  # noqa: E731
        alice = QKD014Client(host(self.alice), *self.sae("sae-alice"))
        bob = QKD014Client(host(self.bob), *self.sae("sae-bob"))
        print(f"$ QKD014Client({host(self.alice)!r}, sae-alice cert).get_status('sae-bob')", flush=True)
        code, status = alice.get_status("sae-bob")
        expect(code == 200, f"get_status {code}: {status}")
        print("$ .get_key('sae-bob', number=1, size=256)", flush=True)
        deadline = time.monotonic() + 30
        while True:
            code, keys = alice.get_key("sae-bob", number=1, size=256)
            if code == 200 or time.monotonic() > deadline:
                break
            time.sleep(2)
        expect(code == 200, f"get_key {code}: {keys}")
        kid, kval = keys.keys[0].key_id, keys.keys[0].key
        print(f"$ QKD014Client({host(self.bob)!r}, sae-bob cert).get_key_with_key_IDs('sae-alice', [{kid!r}])",
              flush=True)
        code, got = bob.get_key_with_key_IDs("sae-alice", [kid])
        expect(code == 200 and got.keys[0].key == kval, f"get_key_with_key_IDs {code}")
        return f"etsi-qkd-014-client: key {kid} at both ends"


def main() -> int:
    t0 = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="qkdnet-interop-"))
    net = Network(work / "state")
    try:
        net.up()
    except Exception as exc:
        print(f"FAIL network start: {exc}")
        print("0 passed, 1 failed")
        return 1
    try:
        Suites(net, work).all()
    finally:
        net.down()
    print(f"\n{len(passed)} checks passed, {len(failed)} failed, {len(skipped)} skipped "
          f"in {time.monotonic() - t0:.0f} s")
    if failed:
        print("failed: " + ", ".join(failed))
    print(f"{len(passed)} passed, {len(failed)} failed")
    if not failed:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"(state and logs kept in {work})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

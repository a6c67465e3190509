"""The MadQCI use cases (src/usecases, README "Use cases").

* Unit: the crypto of each use case (hybrid combiner, OPoT tags and verifier, encryptor frames)
  and the `use_cases:` parser's errors.
* System: tests/data/usecases.yaml booted once (`qkdnet up` without its use cases, so only the
  test's runs touch the SAEs), then every use case run as its own `qkd-usecase` process (through
  `run_use_cases`, in parallel) for a few seconds: each served, its metrics > 0, and the nodes'
  Prometheus deltas equal to what its 014 clients counted.
* `qkdnet up --duration` exits non-zero naming a use case that cannot be served (an SAE pair
  without a route).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from orchestrator.topology import TopologyError, load_topology, parse_topology
from orchestrator.usecases_run import run_use_cases, summary_table
from usecases import hybrid, opot
from usecases.encryptor import FrameAuthError, open_frame, parse_header, seal
from usecases.prometheus import delta, mismatches, parse, series
from usecases.spec import UseCaseSpecError, parse_use_cases

from test_orchestrator_helpers import UpNetwork, env_without_proxy, qkdnet_up

ROOT = Path(__file__).resolve().parents[1]
SUITE_BUDGET_S = 300.0  # two networks booted (about 40 s each on a loaded machine) and use cases run
TOPOLOGY = ROOT / "tests" / "data" / "usecases.yaml"


def _mlkem() -> bool:
    """Whether `cryptography` offers ML-KEM here (version 50 with its bundled OpenSSL does)."""
    try:
        from cryptography.hazmat.primitives.asymmetric import mlkem

        mlkem.MLKEM768PrivateKey.generate()
        return True
    except Exception:
        return False


# -- hybrid -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("kem_name", ["auto", "x25519"])
def test_hybrid_both_sides_derive_the_same_key(kem_name: str) -> None:
    kem = hybrid.kem_for(kem_name)
    qk = os.urandom(32)
    sk, pk = kem.keypair()
    ss_b, ct = kem.encapsulate(pk)
    ss_a = kem.decapsulate(sk, ct)
    th = hybrid.transcript("sae-a", "sae-b", "kid", kem.name, pk, ct)
    assert hybrid.combine(qk, ss_a, th) == hybrid.combine(qk, ss_b, th)
    assert kem.name == ("ML-KEM-768" if kem_name == "auto" and _mlkem() else "X25519")


def test_hybrid_key_changes_when_either_input_changes() -> None:
    qk, ss, th = os.urandom(32), os.urandom(32), os.urandom(32)
    k = hybrid.combine(qk, ss, th)
    flipped_qk = bytes([qk[0] ^ 1]) + qk[1:]
    flipped_ss = ss[:-1] + bytes([ss[-1] ^ 0x80])
    assert hybrid.combine(flipped_qk, ss, th) != k
    assert hybrid.combine(qk, flipped_ss, th) != k
    assert hybrid.combine(qk, ss, os.urandom(32)) != k
    assert len({k, hybrid.combine(ss, qk, th)}) == 2  # the two inputs have distinct places
    with pytest.raises(ValueError):
        hybrid.combine(qk[:16], ss, th)


# -- OPoT -------------------------------------------------------------------------------------------
def _chain(n: int) -> list[bytes]:
    return [os.urandom(32) for _ in range(n - 1)]  # key i is shared by nodes i and i+1


def _through(keys: list[bytes], order: list[int], seq: int, payload: bytes) -> opot.Packet:
    """The ingress (node 0) tags for order[0]; each node in `order` checks and tags for the next."""
    pkt = opot.Packet(seq, True, payload)
    opot.tag_for_next(pkt, order[0], keys[order[0] - 1], "k")
    for here, nxt in zip(order, order[1:]):
        opot.check(pkt, here, keys[here - 1])
        opot.tag_for_next(pkt, nxt, keys[nxt - 1], "k")
    return pkt


def test_opot_verifier_accepts_the_declared_order() -> None:
    keys = _chain(4)
    v = opot.Verifier(3)
    for seq in range(3):
        pkt = opot.Packet.decode(_through(keys, [1, 2, 3], seq, b"payload %d" % seq).encode())
        v.verify(pkt, keys[2])
    assert v.last_seq == 2


def test_opot_rejects_skipped_and_reordered_nodes() -> None:
    keys = _chain(4)
    # node 1 skipped: the ingress tagged for node 1, node 2 cannot check that tag
    pkt = opot.Packet(0, True, b"x")
    opot.tag_for_next(pkt, 1, keys[0], "k")
    with pytest.raises(opot.OpotError):
        opot.check(pkt, 2, keys[1])
    # nodes 1 and 2 swapped, node 2 not checking: its tag for node 1 fails at node 1
    opot.tag_for_next(pkt, 1, keys[1], "k")
    with pytest.raises(opot.OpotError):
        opot.check(pkt, 1, keys[0])
    # the verifier gets a packet that went ingress -> 1 -> 3 (node 2 skipped)
    pkt = _through(keys, [1], 0, b"x")
    opot.check(pkt, 1, keys[0])
    opot.tag_for_next(pkt, 2, keys[1], "k")
    pkt.tag = opot.hop_tag(keys[0], 3, pkt.seq, pkt.payload, pkt.prev_tag)  # node 1 tagging for 3: no key for it
    with pytest.raises(opot.OpotError):
        opot.Verifier(3).verify(pkt, keys[2])
    # the declared order verifies
    opot.Verifier(3).verify(_through(keys, [1, 2, 3], 0, b"x"), keys[2])


def test_opot_verifier_rejects_tampered_replayed_and_reordered_packets() -> None:
    keys = _chain(4)
    good = _through(keys, [1, 2, 3], 5, b"payload")
    tampered = opot.Packet.decode(good.encode())
    tampered.payload = b"pAyload"
    with pytest.raises(opot.OpotError):
        opot.Verifier(3).verify(tampered, keys[2])
    forged = opot.Packet.decode(good.encode())
    forged.prev_tag = os.urandom(32)  # the chain before the last hop is bound too
    with pytest.raises(opot.OpotError):
        opot.Verifier(3).verify(forged, keys[2])
    v = opot.Verifier(3)
    v.verify(good, keys[2])
    with pytest.raises(opot.OpotError, match="replayed or reordered"):
        v.verify(opot.Packet.decode(good.encode()), keys[2])
    with pytest.raises(opot.OpotError, match="replayed or reordered"):
        v.verify(_through(keys, [1, 2, 3], 4, b"earlier"), keys[2])


# -- encryptor --------------------------------------------------------------------------------------
def test_encryptor_frame_decrypts_only_with_its_key() -> None:
    key, other = AESGCM(os.urandom(32)), AESGCM(os.urandom(32))
    frame = seal(key, "0b1c-key", 7, b"secret data")
    assert parse_header(frame)[:2] == ("0b1c-key", 7)
    assert open_frame(key, frame) == (7, b"secret data")
    assert b"secret data" not in frame
    with pytest.raises(FrameAuthError):
        open_frame(other, frame)
    flipped = bytearray(frame)
    flipped[len(b"0b1c-key") + 1 + 7] ^= 1  # the header's seq is authenticated
    with pytest.raises(FrameAuthError):
        open_frame(key, bytes(flipped))


# -- Prometheus comparison --------------------------------------------------------------------------
def test_prometheus_parse_and_delta_per_sae() -> None:
    text = ('# TYPE qkd_etsi014_requests_total counter\n'
            'qkd_etsi014_requests_total{node="a",sae="s1",endpoint="enc_keys",code="200"} 3.0\n'
            'qkd_etsi014_requests_total{node="a",sae="s2",endpoint="enc_keys",code="200"} 9.0\n'
            '# TYPE qkd_etsi014_keys_total counter\n'
            'qkd_etsi014_keys_total{node="a",sae="s1",endpoint="enc_keys"} 4.0\n')
    start = parse(text, ["s1"])
    key = series("qkd_etsi014_requests_total", sae="s1", endpoint="enc_keys", code="200")
    assert start == {key: 3.0, series("qkd_etsi014_keys_total", sae="s1", endpoint="enc_keys"): 4.0}
    end = dict(start, **{key: 5.0})
    assert delta(start, end) == {key: 2}
    assert mismatches({key: 2}, {key: 2}) == []
    assert mismatches({key: 1}, {key: 2}) == [f"{key}: client 1, prometheus 2"]


# -- spec -------------------------------------------------------------------------------------------
BASE = """\
name: t
nodes: [{name: a}, {name: b}]
saes: [{id: s1, node: a}, {id: s2, node: b}, {id: s3, node: b}]
use_cases:
"""


@pytest.mark.parametrize("entry, error", [
    ("  - {name: u, kind: encryptr, saes: [s1, s2]}", "use_cases[0].kind: 'encryptr' is not one of"),
    ("  - {name: u, kind: encryptor, saes: [s1, s9]}", "use_cases[0].saes[1]: no SAE with id 's9'"),
    ("  - {name: u, kind: encryptor, saes: [s1]}", "use_cases[0].saes: expected exactly 2 SAEs, got 1"),
    ("  - {name: u, kind: hybrid, saes: [s1, s1]}", "use_cases[0].saes[1]: SAE 's1' listed twice"),
    ("  - {name: u, kind: encryptor, saes: [s1, s2], rekey_byte: 5}", "unknown field 'rekey_byte' for kind "
                                                                       "encryptor (did you mean 'rekey_bytes'?)"),
    ("  - {name: u, kind: encryptor, saes: [s1, s2], rekey_seconds: -1}", "rekey_seconds: expected a number >= 0.01"),
    ("  - {name: u, kind: cloud, clients: [s1]}", "use_cases[0]: missing required field 'server'"),
    ("  - {name: u, kind: cloud, server: s1, clients: [s2, s1]}", "use_cases[0].clients[1]: SAE 's1' is the server"),
    ("  - {name: u, kind: cloud, server: s1, clients: [s2], concurrency: 1.5}", "concurrency: expected an integer"),
    ("  - {name: u, kind: hybrid, saes: [s1, s2], kem: rsa}", "kem: 'rsa' is not one of auto, ml-kem-768, x25519"),
    ("  - {kind: hybrid, saes: [s1, s2]}", "use_cases[0]: missing required field 'name'"),
    ("  - {name: u, kind: hybrid, saes: [s1, s2]}\n  - {name: u, kind: hybrid, saes: [s1, s2]}",
     "use_cases[1].name: duplicate use case name 'u'"),
    ("  - {name: u, kind: opot, saes: [s1]}", "use_cases[0].saes: expected at least 2 SAEs, got 1"),
    ("  - {name: u, kind: hybrid, saes: [s1, s2]}\n  - {name: v, kind: hybrid, saes: [s3, s2]}",
     "use_cases[1]: SAE 's2' is already used by use case 'u'"),
])
def test_spec_errors_name_line_and_field(tmp_path: Path, entry: str, error: str) -> None:
    path = tmp_path / "t.yaml"
    path.write_text(BASE + entry + "\n")
    with pytest.raises(UseCaseSpecError) as exc:
        parse_use_cases(load_topology(path))
    msg = str(exc.value)
    assert error in msg
    assert msg.startswith(f"{path}:{BASE.count(chr(10)) + 1 + entry.count(chr(10))}: use_cases["), msg
    assert isinstance(exc.value, TopologyError)  # qkdnet up / check report it like a topology error


def test_spec_defaults_and_pairs() -> None:
    specs = {s.name: s for s in parse_use_cases(load_topology(TOPOLOGY))}
    assert [s.kind for s in specs.values()] == ["encryptor", "hybrid", "opot", "cloud"]
    assert specs["uc3-opot"].pairs() == [("opot-1", "opot-2"), ("opot-2", "opot-3"), ("opot-3", "opot-4")]
    assert specs["uc4-cloud"].pairs()[0] == ("cloud-c1", "cloud-s")
    assert specs["uc2-hybrid"].params == {"kem": "auto"}
    assert parse_use_cases(parse_topology(BASE.replace("use_cases:\n", ""))) == []


# -- the four use cases on a running network --------------------------------------------------------
@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpNetwork]:
    """tests/data/usecases.yaml without its use_cases section (qkdnet up would run them itself)."""
    tmp = tmp_path_factory.mktemp("usecases")
    boot = yaml.safe_load(TOPOLOGY.read_text())
    boot.pop("use_cases")
    (tmp / "boot.yaml").write_text(yaml.safe_dump(boot, sort_keys=False))
    up = qkdnet_up(tmp / "boot.yaml", tmp / "net", timeout=150)
    try:
        yield up
    finally:
        up.stop()


@pytest.mark.timeout(300)
def test_every_use_case_served_with_prometheus_equal(network: UpNetwork) -> None:
    results = asyncio.run(run_use_cases(network.state, load_topology(TOPOLOGY), 4.0))
    by_name = {r["name"]: r for r in results}
    assert list(by_name) == ["uc1-encryptors", "uc2-hybrid", "uc3-opot", "uc4-cloud"]
    for r in results:
        assert r["served"], (r["name"], r["reason"], _log(network, r["name"]))
        assert r["mismatches"] == []
        assert r["prometheus"] == r["client"] and r["prometheus"], r["name"]
        assert r["window"]["end"] > r["window"]["start"]
        # every SAE of the use case shows up in the nodes' counters
        saes = {k.split('sae="')[1].split('"')[0] for k in r["prometheus"]}
        assert saes == set(_saes(r["name"])), r["name"]
    uc1, uc2, uc3, uc4 = (by_name[n]["metrics"] for n in by_name)
    assert uc1["throughput"]["value"] > 0 and uc1["latency_p50"]["value"] > 0 and uc1["rekeys"]["value"] >= 1
    enc = by_name["uc1-encryptors"]["prometheus"]
    assert enc[series("qkd_etsi014_keys_total", sae="enc-a", endpoint="enc_keys")] == uc1["keys"]["value"]
    assert enc[series("qkd_etsi014_keys_total", sae="enc-d", endpoint="dec_keys")] == uc1["keys"]["value"]
    assert uc2["hybrid_keys"]["value"] > 0 and uc2["latency_p50"]["value"] > 0
    assert by_name["uc2-hybrid"]["info"]["kem"] == ("ML-KEM-768" if _mlkem() else "X25519")
    assert uc3["opot_added_latency"]["value"] > 0 and uc3["packets"]["value"] > 0
    assert uc4["requests_per_s"]["value"] > 0
    cloud = by_name["uc4-cloud"]["prometheus"]
    served = sum(v for k, v in cloud.items() if k.startswith("qkd_etsi014_keys_total") and "enc_keys" in k)
    assert served == uc4["requests"]["value"]  # one key per served request, counted by the nodes
    table = summary_table(results)
    assert table.row_count == 4


def _saes(name: str) -> list[str]:
    spec = next(s for s in parse_use_cases(load_topology(TOPOLOGY)) if s.name == name)
    return list(spec.saes)


def _log(up: UpNetwork, name: str) -> str:
    p = up.state / "logs" / f"usecase-{name}.log"
    return p.read_text()[-3000:] if p.exists() else ""


# -- qkdnet up --duration: exit code --------------------------------------------------------------
FAILING = {
    "name": "uc-fail",
    "nodes": [{"name": "a"}, {"name": "b"}, {"name": "c"}],
    "fibres": [{"name": "a-b", "ends": ["a", "b"], "length_km": 5}, {"name": "b-c", "ends": ["b", "c"], "length_km": 5}],
    "modules": [
        {"name": "ab-tx", "technology": "dv-bb84", "role": "transmitter", "node": "a", "pairs_with": "ab-rx"},
        {"name": "ab-rx", "technology": "dv-bb84", "role": "receiver", "node": "b", "pairs_with": "ab-tx"},
        {"name": "bc-tx", "technology": "dv-bb84", "role": "transmitter", "node": "b", "pairs_with": "bc-rx"},
        {"name": "bc-rx", "technology": "dv-bb84", "role": "receiver", "node": "c", "pairs_with": "bc-tx"},
    ],
    "saes": [{"id": "sae-a1", "node": "a"}, {"id": "sae-a2", "node": "a"}, {"id": "sae-b", "node": "b"},
             {"id": "sae-c", "node": "c"}],
    "use_cases": [
        {"name": "uc-neighbours", "kind": "hybrid", "saes": ["sae-a1", "sae-b"]},  # direct QKD link
        {"name": "uc-no-route", "kind": "hybrid", "saes": ["sae-a2", "sae-c"]},  # no route a-c declared
    ],
}


@pytest.mark.timeout(300)
def test_qkdnet_up_duration_fails_naming_the_unserved_use_case(tmp_path: Path) -> None:
    topo = tmp_path / "fail.yaml"
    topo.write_text(yaml.safe_dump(FAILING, sort_keys=False))
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator.netctl", "up", "--topology", str(topo), "--state-dir",
         str(tmp_path / "net"), "--duration", "12", "--no-orchestrator", "--timeout", "150"],
        capture_output=True, text=True, timeout=280, env=env_without_proxy())
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "use case(s) not served: uc-no-route" in " ".join(out.split()), out
    named = out.split("not served:")[1].split("QKD network")[0]  # up to the final view's first table
    assert "uc-neighbours" not in named, out
    results: dict[str, Any] = {p.stem: yaml.safe_load(p.read_text())
                               for p in (tmp_path / "net" / "usecases").glob("*.json")}
    assert results["uc-neighbours"]["served"] is True, results["uc-neighbours"]
    assert results["uc-no-route"]["served"] is False
    assert "401" in results["uc-no-route"]["reason"] or "503" in results["uc-no-route"]["reason"]

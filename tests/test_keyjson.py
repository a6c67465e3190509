"""Column-wise key containers: `KeyRun` (a module's keys, packed) and the 014 key JSON written and
read a column at a time (`qkdnode.keystore.keyjson`). Pure functions, table-driven; what they
produce is compared with what plain per-key code (json, base64, struct) produces."""

from __future__ import annotations

import base64
import json
import os
import struct
import uuid

import pytest

from qkdnode.devices.channel import Tick, WireKey, decode, encode
from qkdnode.devices.keyrun import KeyRun, new_key_ids, uuid_texts
from qkdnode.devices.keysource import BufferedKey, KeyBuffer, NotServed
from qkdnode.keystore.keyjson import ack_body, ack_count, keys_body, parse_uniform_keys

pytestmark = pytest.mark.timeout(30)

SEQ0 = 1_700_000_000_000_000  # microseconds: what a module's clock-based seqs look like


def plain_body(ids: list[str], seqs: list[int], material: bytes, kb: int) -> object:
    return {"keys": [{"key_ID": i, "key_ID_extension": {"seq": s},
                      "key": base64.b64encode(material[j * kb:(j + 1) * kb]).decode()}
                     for j, (i, s) in enumerate(zip(ids, seqs))]}


@pytest.mark.parametrize("kb", [1, 2, 3, 16, 30, 32, 64])
@pytest.mark.parametrize("n", [1, 2, 7, 1000])
def test_keys_body_is_the_plain_json_and_reads_back(kb: int, n: int) -> None:
    ids = [str(uuid.uuid4()) for _ in range(n)]
    seqs = list(range(SEQ0, SEQ0 + n))
    material = os.urandom(kb * n)
    body = keys_body(ids, seqs, material, kb)
    assert json.loads(body) == plain_body(ids, seqs, material, kb)
    assert parse_uniform_keys(body, kb) == (ids, seqs, material)


@pytest.mark.parametrize("seqs", [[10, 5, 100], [9, 10, 11], [-1, 0, 1]])
def test_keys_body_with_uneven_seqs_is_plain_json_only(seqs: list[int]) -> None:
    ids = [str(uuid.uuid4()) for _ in seqs]
    material = os.urandom(32 * len(seqs))
    body = keys_body(ids, seqs, material, 32)
    assert json.loads(body) == plain_body(ids, seqs, material, 32)
    assert parse_uniform_keys(body, 32) is None  # records of different lengths: parsed as JSON


def test_other_layouts_are_left_to_json() -> None:
    ids, seqs, material = [str(uuid.uuid4()) for _ in range(3)], [5, 6, 7], os.urandom(96)
    for other in (json.dumps(plain_body(ids, seqs, material, 32)).encode(),  # spaces
                  b'{"keys":[]}', b"[]", b"", b'{"keys":[{"key_ID":"x"}]}'):
        assert parse_uniform_keys(other, 32) is None


@pytest.mark.parametrize("old, new, why", [
    (b'"seq":6', b'"seq":x', "seq"),                       # not a number
    (b'"seq":6', b'"seq":0', None),                        # fine: seqs need not be consecutive
    (b"ID-1", b"zzzz", "UUID"),                            # not hex
    (b"ID-1", b"-aaa", "UUID"),                            # a dash out of place
    (b'"key":"', b'"key":"!', None),                       # one record longer: not the layout
])
def test_bad_values_in_the_layout_are_refused(old: bytes, new: bytes, why: str | None) -> None:
    ids, seqs, material = [str(uuid.uuid4()) for _ in range(3)], [5, 6, 7], os.urandom(96)
    body = keys_body(ids, seqs, material, 32).replace(old.replace(b"ID-1", ids[1][:4].encode()),
                                                      new, 1)
    if why is None:
        got = parse_uniform_keys(body, 32)
        assert got is None or (got[0] == ids and got[2] == material and got[1][0] == seqs[0])
    else:
        with pytest.raises(ValueError, match=why):
            parse_uniform_keys(body, 32)


def test_key_of_the_wrong_size_is_refused() -> None:
    ids, seqs = [str(uuid.uuid4()) for _ in range(2)], [5, 6]
    with pytest.raises(ValueError, match="bytes"):
        parse_uniform_keys(keys_body(ids, seqs, os.urandom(32), 16), 32)


@pytest.mark.parametrize("n", [1, 5, 300])
def test_ack_body(n: int) -> None:
    ids = [str(uuid.uuid4()).upper() for _ in range(n)]
    body = ack_body(ids)
    assert json.loads(body) == {"key_IDs": [{"key_ID": i} for i in ids]}
    assert ack_count(body) == n
    assert ack_count(body + b" ") is None


def test_key_run_records_are_the_channel_wire_format() -> None:
    wire = tuple(WireKey(uuid.uuid4().bytes, 10 + i, os.urandom(32)) for i in range(5))
    run = KeyRun.of(wire, 32)
    rec = struct.Struct(">16sq32s")
    assert run.to_records() == b"".join(rec.pack(k.key_id, k.seq, k.key) for k in wire)
    assert KeyRun.from_records(run.to_records(), 5, 32) == run
    assert list(run) == [(k.key_id, k.seq, k.key) for k in wire]
    assert run[1:3] == KeyRun.of(wire[1:3], 32) and run[-1] == tuple(vars_of(wire[-1]))
    tick = Tick(1, True, "", 1e6, 0.01, None, None, 5.0, 0.0, 32, wire)
    assert decode(encode(tick)[4], encode(tick)[5:]) == tick
    assert repr(run) == "KeyRun(5 keys, seq 10..14)"  # never the key bytes


def vars_of(k: WireKey) -> tuple[bytes, int, bytes]:
    return k.key_id, k.seq, k.key


def test_new_key_ids_are_version_4_uuids() -> None:
    ids = new_key_ids(500)
    texts = uuid_texts(ids)
    assert len(set(texts)) == 500
    for raw, text in zip((ids[o:o + 16] for o in range(0, len(ids), 16)), texts):
        u = uuid.UUID(bytes=raw)
        assert u.version == 4 and u.variant == uuid.RFC_4122 and str(u) == text


def test_key_buffer_acks_a_served_prefix_or_any_served_keys() -> None:
    b = KeyBuffer(1000)
    b.append(KeyRun.consecutive(new_key_ids(5), 10, os.urandom(160), 32))
    b.append([BufferedKey(str(uuid.uuid4()), 15 + i, os.urandom(32)) for i in range(5)])
    keys = b.peek()
    assert [k.seq for k in keys] == list(range(10, 20)) and len(b) == 10
    assert b.serve(6) == keys[:6] and b.served_unacked == 6
    assert b.ack([keys[1].key_id, keys[3].key_id, "unknown"]) == (2, ["unknown"])
    assert [k.seq for k in b.peek()] == [10, 12, 14, 15, 16, 17, 18, 19] and b.served_unacked == 4
    with pytest.raises(NotServed):
        b.ack([keys[9].key_id])
    served = b.serve(5)
    assert served == [keys[0], keys[2], keys[4], keys[5], keys[6]]
    assert b.ack([k.key_id for k in served]) == (5, [])
    assert [k.seq for k in b.peek()] == [17, 18, 19] and b.served_unacked == 0
    assert b.clear() == 3 and len(b) == 0

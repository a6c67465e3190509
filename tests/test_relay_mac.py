"""Key relay crypto pieces: pad layout, one-time pad, Wegman-Carter MAC over GF(2^127 - 1). Table-driven."""

from __future__ import annotations

import os

import pytest

from qkdnode.forwarder.mac import (
    MAC_KEY_BYTES,
    P127,
    TAG_BYTES,
    authenticated_bytes,
    link_keys_needed,
    poly_hash,
    split_material,
    wc_tag,
    wc_verify,
    xor,
)

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize(("n", "key_bytes", "link_bytes", "expected"), [
    (1, 32, 32, 2),        # one key + one MAC key
    (127, 32, 32, 128),    # n keys of the link key size: n + 1
    (128, 32, 32, 129),
    (1, 32, 64, 1),        # 32 + 32 bytes fit one 512-bit link key
    (3, 32, 64, 2),        # 32 + 96 = 128 bytes
    (1, 16, 32, 2),        # 48 bytes: two 256-bit link keys (whole keys only)
    (10, 32, 16, 22),      # 352 bytes of 128-bit link keys
])
def test_link_keys_needed(n: int, key_bytes: int, link_bytes: int, expected: int) -> None:
    assert link_keys_needed(n, key_bytes, link_bytes) == expected
    assert expected * link_bytes >= MAC_KEY_BYTES + n * key_bytes > (expected - 1) * link_bytes


def _reference_hash(r: int, data: bytes) -> int:
    """Textbook evaluation: h = sum c_i r^(q-i+1) mod p, chunks of 15 bytes + 0x01 marker."""
    chunks = [data[i:i + 15] for i in range(0, len(data), 15)]
    q = len(chunks)
    return sum(int.from_bytes(c + b"\x01", "little") * pow(r, q - i, P127) for i, c in enumerate(chunks)) % P127


@pytest.mark.parametrize("length", [0, 1, 14, 15, 16, 29, 30, 31, 100, 4096 + 7])
def test_poly_hash_matches_reference(length: int) -> None:
    data = os.urandom(length)
    r = int.from_bytes(os.urandom(16), "little") & P127
    assert poly_hash(r, data) == _reference_hash(r, data)


@pytest.mark.parametrize(("a", "b"), [
    (b"", b"\x00"),                  # the 0x01 marker separates lengths
    (b"\x00" * 15, b"\x00" * 16),
    (b"abc", b"abc\x00"),
    (b"\x01", b"\x00\x01"),
])
def test_padding_makes_messages_of_different_length_differ(a: bytes, b: bytes) -> None:
    r = 0x1234567890ABCDEF1234567890ABCDE
    assert poly_hash(r, a) != poly_hash(r, b)


def test_tag_verifies_and_any_change_fails() -> None:
    key = os.urandom(MAC_KEY_BYTES)
    data = os.urandom(300)
    tag = wc_tag(key, data)
    assert len(tag) == TAG_BYTES and wc_verify(key, data, tag)
    for i in (0, 150, 299):
        bad = bytearray(data)
        bad[i] ^= 0x01
        assert not wc_verify(key, bytes(bad), tag)
    assert not wc_verify(key, data[:-1], tag)
    assert not wc_verify(key, data + b"\x00", tag)
    assert not wc_verify(key, data, bytes([tag[0] ^ 1]) + tag[1:])
    assert not wc_verify(key, data, tag[:-1])
    other = bytearray(key)
    other[20] ^= 0x80  # s changed: the tag moves
    assert not wc_verify(bytes(other), data, tag)


def test_xor_is_its_own_inverse() -> None:
    data, pad = os.urandom(64), os.urandom(64)
    assert xor(xor(data, pad), pad) == data
    assert xor(b"", b"") == b""
    with pytest.raises(ValueError):
        xor(data, pad[:-1])


def test_split_material() -> None:
    material = bytes(range(96))
    mac_key, pad = split_material(material, 40)
    assert mac_key == material[:32] and pad == material[32:72]
    with pytest.raises(ValueError):
        split_material(material, 65)


_BASE = dict(relay_id="r", route_id="q", origin="o", target="t", hop=1, link_id="l", key_size_bits=256,
             link_key_ids=["k1", "k2"], key_ids=["x"], ciphertext=b"c")


@pytest.mark.parametrize("change", [
    {"relay_id": "r2"}, {"route_id": "q2"}, {"origin": "t", "target": "o"}, {"hop": 2}, {"link_id": "l2"},
    {"key_size_bits": 128}, {"link_key_ids": ["k2", "k1"]}, {"link_key_ids": ["k1,k2"]},
    {"key_ids": ["x", "y"]}, {"ciphertext": b"d"}, {"relay_id": "rq", "route_id": ""},
])
def test_authenticated_bytes_cover_every_field(change: dict) -> None:
    assert authenticated_bytes(**{**_BASE, **change}) != authenticated_bytes(**_BASE)

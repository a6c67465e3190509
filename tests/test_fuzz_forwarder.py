"""Bad input for the key forwarder's gRPC service (mutual TLS with a neighbour's real certificate):
garbage protobufs, invalid Prepare requests (unknown route or link, zero or huge sizes, bad IDs),
Commits without a reservation, and a captured valid hop replayed as is or with a wrong MAC, wrong
sizes or an unknown route.

Each is answered with a gRPC error status of the service (never UNKNOWN or an "internal error"),
no reservation is left behind, and no link key is consumed: a replayed hop names link keys that
are already gone, so even the documented bad-tag rule (the receiver takes the named keys) takes
nothing. Chain a - b - c - d from tests/test_forwarder.py.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import grpc
import pytest

from fuzz import driver as fz
from test_forwarder import ROUTE, _stub, close_chain, make_chain
from qkdnode.forwarder.service import pb

pytestmark = pytest.mark.timeout(180)
SUITE_BUDGET_S = 600.0 if fz.LONG else 60.0  # `make fuzz` runs the long mode


def service_error(exc: BaseException | None) -> bool:
    """A gRPC status the service chose (not a crash) for a refused input."""
    if not isinstance(exc, grpc.aio.AioRpcError):
        return False
    return exc.code() not in (grpc.StatusCode.OK, grpc.StatusCode.UNKNOWN) and \
        "internal error" not in (exc.details() or "")


async def expect_error(call: Any) -> BaseException | None:
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc
    return None


def bad_prepares(chain: Any, r: Any) -> list[Any]:
    a, d = chain.nodes["a"].node_id, chain.nodes["d"].node_id
    good = dict(relay_id=str(uuid.uuid4()), route_id=ROUTE, origin=a, target=d, hop=1,
                link_id=chain.link_ids["a", "b"], keys=1, key_size_bits=256, link_keys=2, link_seq=0)
    mutations = [
        {"route_id": str(uuid.uuid4())}, {"route_id": "not-a-uuid"}, {"link_id": str(uuid.uuid4())},
        {"link_id": chain.link_ids["c", "d"]}, {"keys": 0}, {"keys": 10**6}, {"key_size_bits": 0},
        {"key_size_bits": 2**31}, {"key_size_bits": 7}, {"link_keys": 0}, {"link_keys": 10**6},
        {"origin": str(uuid.uuid4())}, {"target": str(uuid.uuid4())}, {"origin": d, "target": a},
        {"relay_id": ""}, {"relay_id": fz.weird_text(r) + "x"}, {"link_seq": -1}, {"link_seq": 2**62},
        {"hop": 0}, {"hop": 2**31},
    ]
    out = []
    for m in mutations:
        fields = {**good, **m}
        if "relay_id" not in m:
            fields["relay_id"] = str(uuid.uuid4())
        out.append(pb.PrepareRequest(**fields))
    return out


async def test_garbage_and_invalid_requests(tmp_path: Any) -> None:
    chain = await make_chain(tmp_path)
    try:
        r = fz.rng("forwarder")
        before = chain.snapshot()
        start = fz.TALLY.bad_answers
        ch, stub = _stub(chain, "a", "b")  # a is b's previous hop on the route: a valid peer sending bad input
        raw = {name: ch.unary_unary(f"/{pb.DESCRIPTOR.package}.KeyRelay/{name}",
                                    request_serializer=lambda b: b, response_deserializer=lambda b: b)
               for name in ("Prepare", "Commit", "Abort")}
        try:
            for _ in range(fz.count(1, 20)):
                for name, call in raw.items():  # bytes that are no valid protobuf of the request type
                    for blob in (fz.garbage(r, r.randrange(1, 200)), b"\xff" * 10, b"\x0a\xff\xff\xff\xff\x0f"):
                        exc = await expect_error(call(blob, timeout=10))
                        # grpc-python answers a request it cannot decode with UNKNOWN "Error parsing
                        # message" before the service sees it; random bytes may also decode as a
                        # valid message: then the service's own error, or, for Abort (of a relay that
                        # is not prepared here), its no-op reply; any other outcome is bad
                        ok = (exc is None and name == "Abort") or exc is not None and (
                            service_error(exc) or "parsing message" in (exc.details() or ""))
                        fz.TALLY.record("forwarder", ok, f"{name} garbage {blob[:20]!r} -> {exc!r:.200}")
                for req in bad_prepares(chain, r):
                    exc = await expect_error(stub.Prepare(req, timeout=10))
                    fz.TALLY.record("forwarder", service_error(exc), f"Prepare {req} -> {exc!r:.300}")
                for _ in range(5):  # a commit without any reservation
                    hop = pb.RelayHop(relay_id=str(uuid.uuid4()), route_id=ROUTE, origin=chain.nodes["a"].node_id,
                                      target=chain.nodes["d"].node_id, hop=1, link_id=chain.link_ids["a", "b"],
                                      key_size_bits=256, link_key_ids=[str(uuid.uuid4())] * 2,
                                      key_ids=[str(uuid.uuid4())], ciphertext=fz.garbage(r, 32),
                                      tag=fz.garbage(r, 16))
                    exc = await expect_error(stub.Commit(hop, timeout=10))
                    fz.TALLY.record("forwarder", service_error(exc), f"Commit without prepare -> {exc!r:.300}")
                exc = await expect_error(stub.Abort(pb.AbortRequest(relay_id=str(uuid.uuid4()), route_id=ROUTE,
                                                                    reason="x"), timeout=10))
                fz.TALLY.record("forwarder", exc is None or service_error(exc), f"Abort unknown -> {exc!r:.200}")
        finally:
            await ch.close()
        await asyncio.sleep(0.1)
        assert fz.TALLY.bad_answers == start, fz.TALLY.bad_examples[-5:]
        assert chain.snapshot() == before
        assert not chain.nodes["a"].fwd.pending and not +chain.nodes["a"].fwd.linkkeys.reserved
        status, body = await chain.enc("a", "sae-a", "sae-d", 2)  # still relaying
        assert status == 200, body
    finally:
        await close_chain(chain)


async def test_replayed_and_mutated_hops_consume_nothing(tmp_path: Any) -> None:
    chain = await make_chain(tmp_path)
    try:
        b = chain.nodes["b"].fwd
        real_send = b.send_commit
        captured: list[Any] = []

        async def recording(nb: Any, msg: Any) -> Any:  # b -> c, as c receives it
            copy = pb.RelayHop()
            copy.CopyFrom(msg)
            captured.append(copy)
            return await real_send(nb, msg)

        b.send_commit = recording  # type: ignore[method-assign]
        rounds = fz.count(2, 20)
        for _ in range(rounds):
            status, body = await chain.enc("a", "sae-a", "sae-d", 2)
            assert status == 200, body
        b.send_commit = real_send  # type: ignore[method-assign]
        assert len(captured) == rounds
        before = chain.snapshot()
        start = fz.TALLY.bad_answers
        r = fz.rng("replay")
        ch, stub = _stub(chain, "b", "c")
        try:
            for msg in captured:
                variants = [("replay", msg)]
                for label, change in (
                    ("wrong-mac", lambda m: setattr(m, "tag", bytes(x ^ 1 for x in m.tag))),
                    ("short-ciphertext", lambda m: setattr(m, "ciphertext", m.ciphertext[:-1])),
                    ("extra-key", lambda m: m.key_ids.append(str(uuid.uuid4()))),
                    ("fewer-link-keys", lambda m: m.link_key_ids.pop()),
                    ("unknown-route", lambda m: setattr(m, "route_id", str(uuid.uuid4()))),
                    ("wrong-size", lambda m: setattr(m, "key_size_bits", 512)),
                    ("new-relay-id", lambda m: setattr(m, "relay_id", str(uuid.uuid4()))),
                    ("noise-tag", lambda m: setattr(m, "tag", fz.garbage(r, r.randrange(0, 40)))),
                ):
                    m2 = pb.RelayHop()
                    m2.CopyFrom(msg)
                    change(m2)
                    variants.append((label, m2))
                for label, m in variants:
                    exc = await expect_error(stub.Commit(m, timeout=10))
                    fz.TALLY.record("forwarder", service_error(exc), f"Commit {label} -> {exc!r:.300}")
        finally:
            await ch.close()
        await asyncio.sleep(0.1)
        assert fz.TALLY.bad_answers == start, fz.TALLY.bad_examples[-5:]
        assert chain.snapshot() == before  # no link key and no relayed key moved
        assert chain.nodes["d"].store.stats(ROUTE).delivered == 0
        status, body = await chain.enc("a", "sae-a", "sae-d", 2)
        assert status == 200, body
    finally:
        await close_chain(chain)

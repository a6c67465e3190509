"""The link key associations of a node as the forwarder uses them: reservations and takes.

* **Reservations** (in memory): the link keys prepared relays will take, per association. A
  prepare reserves against `available_for_masters` (this node's parity half); 014 masters on the
  same association are held to what is not reserved (`RelayCommitter`).
* **The sender's half of a hop at the origin**: `take_out`, through the group committer.
* **A hop at a relaying node or the target**: `take_hop`, one store transaction (`begin_batch` ...
  `finish_batch` in a worker thread) that takes the link keys the previous hop named (its parity,
  all or nothing), checks the tag with them, and takes this node's reserved keys for the next hop;
  it is committed (one fsync) only if all of that holds, else rolled back (`OpenBatch.fail`), so a
  failed hop takes nothing for the next hop. Link keys are durably consumed before any ciphertext
  made with them leaves the node, so a crash can never reuse a pad.
Ledger rows of link keys name the hop: master `forwarder:<sender>`, slave `forwarder:<receiver>`.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable

from ..keystore.committer import GroupCommitter
from ..keystore.errors import KeysNotAvailable, KeyStoreError
from ..keystore.store import KeyStore
from ..keystore.types import Delivery, MasterRequest, SlaveRequest
from .errors import LinkKeyMismatch, LinkKeyShort, MacMismatch

WAIT_S = 1.0  # how long a receiver waits for its own feeder to store link keys the sender named

Verify = Callable[[bytes], bool]


def _describe(err: BaseException) -> str:
    return err.message if isinstance(err, KeyStoreError) else type(err).__name__


def ledger(sender: str, receiver: str) -> tuple[str, str]:
    return f"forwarder:{sender}", f"forwarder:{receiver}"


class LinkKeys:
    def __init__(self, store: KeyStore, node_name: str, committer: GroupCommitter,
                 counters: Counter[str]) -> None:
        self.store = store
        self.node_name = node_name
        self.committer = committer
        self.counters = counters
        self.reserved: Counter[str] = Counter()

    @property
    def where(self) -> str:
        return f"node {self.node_name}"

    # -- reservations -------------------------------------------------------------------------------
    def free(self, link_id: str) -> int:
        """Master-parity link keys of an association not reserved by a prepared relay."""
        return self.store.stats(link_id).available_for_masters - self.reserved[link_id]

    def reserve(self, link_id: str, m: int) -> None:
        self.reserved[link_id] += m

    def release(self, link_id: str, m: int) -> None:
        self.reserved[link_id] -= m

    # -- takes --------------------------------------------------------------------------------------
    async def take_out(self, link_id: str, m: int, peer: str) -> Delivery:
        """Take m reserved link keys of this node's parity (oldest first) for a hop to `peer`;
        the reservation goes with them."""
        st = self.store.stats(link_id)
        lim = st.max_keys_per_request
        master, slave = ledger(self.node_name, peer)
        reqs = [MasterRequest(link_id, master, slave, min(lim, m - i), st.key_size_bits) for i in range(0, m, lim)]
        results = await asyncio.gather(*(self.committer.deliver(r) for r in reqs), return_exceptions=True)
        self.release(link_id, m)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            got = sum(len(r) for r in results if not isinstance(r, BaseException))  # type: ignore[arg-type]
            raise LinkKeyShort(f"{self.where}: could not take {m} link keys for {peer} "
                               f"({_describe(failed[0])}; {got} taken)")
        self.counters["link_keys_sent"] += m
        return [kv for r in results for kv in r]  # type: ignore[union-attr]

    async def take_hop(self, in_link: str, in_ids: list[str], peer: str, out: tuple[str, int, str] | None,
                       verify: Verify, relay_id: str) -> tuple[bytes, Delivery]:
        """One hop's store transaction (see the module docstring): the named link keys from `peer`,
        checked by `verify`, and `out` = (link, m, next peer) reserved keys for the next hop, whose
        reservation goes with them. On a bad tag the named keys are then taken on their own, as the
        sender took its copies. Returns (the named link keys' bytes, the next hop's link keys)."""
        st = self.store.stats(in_link)
        lim = st.max_keys_per_request
        master, slave = ledger(peer, self.node_name)
        in_reqs = [SlaveRequest(in_link, tuple(in_ids[i:i + lim]), master, slave) for i in range(0, len(in_ids), lim)]
        out_reqs: list[MasterRequest] = []
        if out is not None:
            out_link, m, out_peer = out
            ost = self.store.stats(out_link)
            olim = ost.max_keys_per_request
            omaster, oslave = ledger(self.node_name, out_peer)
            out_reqs = [MasterRequest(out_link, omaster, oslave, min(olim, m - i), ost.key_size_bits)
                        for i in range(0, m, olim)]
        deadline = time.monotonic() + WAIT_S
        while True:
            last = self.store.stats(in_link).last_seq
            status, material, taken, detail = await asyncio.to_thread(self._hop_tx, in_reqs, out_reqs, verify)
            if status == "ok":
                if out is not None:
                    self.release(out[0], out[1])
                    self.counters["link_keys_sent"] += len(taken)
                return material, taken
            if status == "unknown" and time.monotonic() < deadline:  # our feeder has not stored them yet
                while self.store.stats(in_link).last_seq == last and time.monotonic() < deadline:
                    await asyncio.sleep(0.002)
                continue
            if status == "mac":
                self.counters["mac_failures"] += 1
                await asyncio.to_thread(self._hop_tx, in_reqs, [], None)
                raise MacMismatch(f"{self.where}: tag of the hop from {peer} does not verify; "
                                  f"relay {relay_id} dropped")
            if status == "short":
                raise LinkKeyShort(f"{self.where}: could not take the reserved link keys ({detail})")
            raise LinkKeyMismatch(f"{self.where}: link keys named by {peer} not available ({detail})")

    def _hop_tx(self, in_reqs: list[SlaveRequest], out_reqs: list[MasterRequest],
                verify: Verify | None) -> tuple[str, bytes, Delivery, str]:
        """(worker thread) The transaction of `take_hop`: status ok | unknown | mismatch | mac | short
        | storage, the named link keys' bytes and the taken link keys (both empty unless ok)."""
        batch = self.store.begin_batch([*in_reqs, *out_reqs])
        status, detail, material, taken = "ok", "", b"", []
        try:
            results = list(batch.results)
            if batch.error is not None or len(results) != len(in_reqs) + len(out_reqs):
                status, detail = "storage", batch.error or "incomplete batch"
            else:
                ins, outs = results[:len(in_reqs)], results[len(in_reqs):]
                err = next((r for r in ins if isinstance(r, KeyStoreError)), None)
                if err is not None:
                    unknown = isinstance(err, KeysNotAvailable) and all(d.get("reason") == "unknown" for d in err.details)
                    status, detail = ("unknown" if unknown else "mismatch"), _describe(err)
                else:
                    material = b"".join(k for r in ins for _, k in r)  # type: ignore[union-attr]
                    if verify is not None and not verify(material):
                        status = "mac"
                    elif (err := next((r for r in outs if isinstance(r, KeyStoreError)), None)) is not None:
                        status, detail = "short", _describe(err)
                    else:
                        taken = [kv for r in outs for kv in r]  # type: ignore[union-attr]
            if status != "ok":
                batch.fail(RuntimeError(status))  # finish_batch rolls the whole transaction back
        finally:
            final = self.store.finish_batch(batch)
        if status == "ok" and any(isinstance(r, KeyStoreError) for r in final):
            status, detail = "storage", "commit failed"
        if status != "ok":
            return status, b"", [], detail
        return status, material, taken, detail

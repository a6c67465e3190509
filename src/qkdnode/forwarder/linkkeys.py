"""The link key associations of a node as the forwarder uses them: reservations, intents and takes.

* **Reservations** (in memory): the link keys prepared relays will take, per association. A
  prepare reserves against `available_for_masters` (this node's parity half); 014 masters on the
  same association are held to what is not reserved (`RelayCommitter`).
* **Intents** (durable, `intend`): a sender records, while its prepare travels on, how many keys
  of its half the hop will take (`KeyStore.add_intent`; every node of the path does it at the same
  time, so the fsyncs overlap instead of adding up hop by hop). A relay that will not be committed
  withdraws its intent.
* **A hop's take** (`take_hop`): one store transaction that takes the link keys the previous hop
  named (its parity, all or nothing), checks the tag with them, and takes this node's reserved keys
  for the next hop, spending that much of the intent (a relay prepared ahead for several commits
  spends it a commit at a time); committed only if all of that holds, else rolled back
  (`OpenBatch.fail`), so a failed hop takes nothing for the next hop. It commits *without* fsync:
  the out keys are covered by the intent (a crash that loses the take consumes them again at the
  next open: `keystore/intent.py`), and the node makes the transaction durable (`barrier`) while the
  next hop works, before it answers upstream. So a pad is never reused, and a relay answered to the
  origin is durable on every node.
Ledger rows of link keys name the hop: master `forwarder:<sender>`, slave `forwarder:<receiver>`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable

from ..keystore.errors import KeysNotAvailable, KeyStoreError
from ..keystore.store import KeyStore
from ..keystore.stream import stream_moves
from ..keystore.types import Delivery, MasterRequest, SlaveRequest
from .errors import LinkKeyMismatch, LinkKeyShort, MacMismatch, RelayError

log = logging.getLogger(__name__)

WAIT_S = 1.0  # how long a receiver waits for its own feeder to store link keys the sender named

Verify = Callable[[bytes], bool]


def _describe(err: BaseException) -> str:
    return err.message if isinstance(err, KeyStoreError) else type(err).__name__


def ledger(sender: str, receiver: str) -> tuple[str, str]:
    return f"forwarder:{sender}", f"forwarder:{receiver}"


class LinkKeys:
    def __init__(self, store: KeyStore, node_name: str, counters: Counter[str]) -> None:
        self.store = store
        self.node_name = node_name
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

    # -- intents ------------------------------------------------------------------------------------
    async def intend(self, relay_id: str, link_id: str, m: int, peer: str) -> None:
        """Record durably that relay `relay_id` will take m keys of this node's half for `peer`."""
        master, slave = ledger(self.node_name, peer)
        try:
            await asyncio.to_thread(self.store.add_intent, relay_id, link_id, m, master, slave)
        except KeyStoreError as err:
            raise LinkKeyShort(f"{self.where}: cannot reserve link keys for {peer} ({_describe(err)})") from None

    async def withdraw(self, relay_id: str, intent: Awaitable[None] | None = None) -> None:
        """Drop the intent of a relay that will not take its keys (once its write is done)."""
        if intent is not None:
            try:
                await intent
            except Exception:
                return  # never recorded
        try:
            await asyncio.to_thread(self.store.drop_intents, [relay_id])
        except KeyStoreError as err:  # a surviving intent only costs its keys at the next open
            log.warning("%s: %s", self.where, _describe(err))

    async def barrier(self, ticket: int) -> None:
        """Until the store transaction `ticket` is durable (one fsync shared by the waiters)."""
        if self.store.synced < ticket:
            try:
                await asyncio.to_thread(self.store.sync, ticket)
            except KeyStoreError as err:
                raise RelayError(f"{self.where}: key store not durable ({_describe(err)})") from None

    # -- takes --------------------------------------------------------------------------------------
    async def take_hop(self, in_link: str | None, in_ids: list[str], peer: str | None,
                       out: tuple[str, int, str] | None, verify: Verify | None,
                       relay_id: str, spend: int) -> tuple[bytes, Delivery, int]:
        """One hop's store transaction (see the module docstring): the named link keys from `peer`
        (none at the origin), checked by `verify`, and `out` = (link, m, next peer) reserved keys for
        the next hop, spending `spend` keys of the relay's intent (the caller releases their
        reservation). On a bad tag the named keys are then taken on their own, as the sender took its
        copies. Returns (the named link keys' bytes, the next hop's link keys, the transaction's
        ticket for `barrier`)."""
        in_reqs: list[SlaveRequest] = []
        if in_link is not None:
            assert peer is not None
            lim = self.store.stats(in_link).max_keys_per_request
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
            last = self.store.stats(in_link).last_seq if in_link is not None else 0
            # on the loop when the store is free (no thread hand-off: no fsync is waited for)
            done = self._hop_tx(in_reqs, out_reqs, verify, relay_id, spend, blocking=False)
            if done is None:
                done = await asyncio.to_thread(self._hop_tx, in_reqs, out_reqs, verify, relay_id, spend)
            status, material, taken, detail, ticket = done
            if status == "ok":
                if out is not None:
                    self.counters["link_keys_sent"] += len(taken)
                return material, taken, ticket
            if status == "unknown" and in_link is not None and time.monotonic() < deadline:
                await stream_moves(self.store, in_link, last, deadline)  # our feeder has not stored them yet
                continue
            if status == "mac":
                self.counters["mac_failures"] += 1
                await asyncio.to_thread(lambda: self._hop_tx(in_reqs, [], None, None, 0, durable=True))
                raise MacMismatch(f"{self.where}: tag of the hop from {peer} does not verify; "
                                  f"relay {relay_id} dropped")
            if status == "short":
                raise LinkKeyShort(f"{self.where}: could not take the reserved link keys ({detail})")
            raise LinkKeyMismatch(f"{self.where}: link keys named by {peer} not available ({detail})")

    def _hop_tx(self, in_reqs: list[SlaveRequest], out_reqs: list[MasterRequest], verify: Verify | None,
                relay_id: str | None, spend: int, blocking: bool = True, durable: bool = False,
                ) -> tuple[str, bytes, Delivery, str, int] | None:
        """The transaction of `take_hop`: status ok | unknown | mismatch | mac | short | storage, the
        named link keys' bytes and the taken link keys (both empty unless ok), the ticket; None if
        not blocking and the store is busy."""
        batch = self.store.begin_batch([*in_reqs, *out_reqs], blocking=blocking, durable=durable,
                                       spend_intents=((relay_id, spend),) if out_reqs and relay_id else ())
        if batch is None:
            return None
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
            return status, b"", [], detail, 0
        return status, material, taken, detail, batch.ticket

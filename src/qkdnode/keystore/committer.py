"""Group commit for asyncio callers of `KeyStore`.

Why a thread: a delivery is only answered after its transaction is durable (fsync of the WAL, about
0.1-1 ms). Done on the event loop, every fsync would stall all connections. Here one dedicated thread
runs `KeyStore.deliver_batch`; while it is committing, requests that arrive queue up and go into the
next transaction together (group commit). Each caller still gets its reply only after the transaction
holding its delivery has committed, so durability is per request; there is no timer and no added
latency when idle. SQLite releases the GIL during I/O, so the loop keeps serving TLS meanwhile.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Sequence

from .errors import KeyStoreError
from .store import KeyStore
from .types import Delivery, DeliveryRequest

_Waiter = tuple[DeliveryRequest, "asyncio.Future[Delivery]"]


class GroupCommitter:
    """Serve delivery requests of one event loop through a single key store thread."""

    def __init__(self, store: KeyStore, *, max_batch: int = 256) -> None:
        self.store = store
        self.max_batch = max_batch
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="keystore")
        self._pending: list[_Waiter] = []
        self._busy = False
        self._closed = False
        self.batches = 0
        self.requests = 0

    async def deliver(self, request: DeliveryRequest) -> Delivery:
        """Deliver keys for one request; raises its KeyStoreError. Returns after the commit."""
        if self._closed:
            raise RuntimeError("GroupCommitter is closed")
        fut: asyncio.Future[Delivery] = asyncio.get_running_loop().create_future()
        self._pending.append((request, fut))
        if not self._busy:
            self._kick()
        return await fut

    def _kick(self) -> None:
        batch = self._pending[: self.max_batch]
        del self._pending[: self.max_batch]
        self._busy = True
        loop = asyncio.get_running_loop()
        cf = self._executor.submit(self.store.deliver_batch, [r for r, _ in batch])
        asyncio.wrap_future(cf, loop=loop).add_done_callback(lambda f: self._done(batch, f))

    def _done(self, batch: Sequence[_Waiter], f: asyncio.Future[list[Delivery | KeyStoreError]]) -> None:
        self._busy = False
        self.batches += 1
        self.requests += len(batch)
        exc = f.exception() if not f.cancelled() else asyncio.CancelledError()
        results = f.result() if exc is None else None
        for i, (_, fut) in enumerate(batch):
            if fut.done():  # the caller went away; its keys are delivered and gone regardless
                continue
            if results is None:
                fut.set_exception(exc if exc is not None else RuntimeError("no result"))
                continue
            out = results[i]
            if isinstance(out, KeyStoreError):
                fut.set_exception(out)
            else:
                fut.set_result(out)
        if self._pending:
            self._kick()

    async def aclose(self) -> None:
        """Wait for the batch in flight, then stop the thread (the store stays open)."""
        self._closed = True
        while self._busy or self._pending:
            await asyncio.sleep(0.001)
        self._executor.shutdown(wait=True)

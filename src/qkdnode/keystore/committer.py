"""Group commit for asyncio callers of `KeyStore`.

A delivery is answered only after its transaction is durable (fdatasync of the WAL, 0.1-0.5 ms).
Doing that on the event loop would stall every connection, so the work is split:

* on the loop: `KeyStore.begin_batch` serves all waiting requests in one open transaction (in-memory
  index, page-cache writes; tens of microseconds per request, no fsync);
* in one commit thread: `KeyStore.finish_batch` runs COMMIT (SQLite releases the GIL for the I/O)
  and the results go back to the loop; only then are the callers' futures resolved.

While a commit is in flight, new requests queue up and form the next group: group commit without a
timer, so an idle server adds no latency, and a busy one amortises each fsync over many requests.
The commit thread is also where a whole batch runs when the store is busy with a synchronous caller
in another thread (e.g. an ingest), so the loop never waits for the store lock.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable

from .errors import KeyStoreError, StorageError
from .store import KeyStore
from .types import Delivery, DeliveryRequest

_Result = Delivery | KeyStoreError
_Waiter = tuple[DeliveryRequest, "asyncio.Future[Delivery]"]
_Job = tuple[Callable[[], list[_Result]], list[_Waiter]]


class GroupCommitter:
    """Serve delivery requests of one event loop with group commit (see the module docstring)."""

    def __init__(self, store: KeyStore, *, max_batch: int = 256) -> None:
        self.store = store
        self.max_batch = max_batch
        self._pending: list[_Waiter] = []
        self._in_flight = False
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self.batches = 0
        self.requests = 0

    async def deliver(self, request: DeliveryRequest) -> Delivery:
        """Deliver keys for one request; raises its KeyStoreError. Returns after the commit."""
        if self._closed:
            raise RuntimeError("GroupCommitter is closed")
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
            self._thread = threading.Thread(target=self._run, name="keystore-commit", daemon=True)
            self._thread.start()
        elif loop is not self._loop:
            raise RuntimeError("GroupCommitter is bound to another event loop")
        fut: asyncio.Future[Delivery] = loop.create_future()
        self._pending.append((request, fut))
        if not self._in_flight:
            self._launch()
        return await fut

    def _launch(self) -> None:
        """Start the next group: phase 1 here on the loop, phase 2 in the commit thread."""
        batch = self._pending[: self.max_batch]
        del self._pending[: self.max_batch]
        self._in_flight = True
        requests = [r for r, _ in batch]
        opened = self.store.begin_batch(requests, blocking=False)
        if opened is None:  # a synchronous caller holds the store: do the whole group in the thread
            self._jobs.put((lambda: self.store.deliver_batch(requests), batch))
        else:
            self._jobs.put((lambda: self.store.finish_batch(opened), batch))

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            work, batch = job
            try:
                results = work()
            except Exception as e:  # e.g. the store was closed: fail the group, keep serving
                results = [StorageError(f"key store unavailable ({type(e).__name__})") for _ in batch]
            assert self._loop is not None
            try:
                self._loop.call_soon_threadsafe(self._done, batch, results)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                pass

    def _done(self, batch: list[_Waiter], results: list[_Result]) -> None:
        self._in_flight = False
        self.batches += 1
        self.requests += len(batch)
        if self._pending:  # start the next group before waking this one's callers
            self._launch()
        for (_, fut), res in zip(batch, results, strict=True):
            if fut.done():  # the caller went away; its keys were delivered and are gone regardless
                continue
            if isinstance(res, KeyStoreError):
                fut.set_exception(res)
            else:
                fut.set_result(res)

    async def aclose(self) -> None:
        """Finish the group in flight, then stop the commit thread (the store stays open)."""
        self._closed = True
        while self._in_flight or self._pending:
            await asyncio.sleep(0.001)
        if self._thread is not None:
            self._jobs.put(None)
            await asyncio.to_thread(self._thread.join)

"""Recovery at open: the link keys of relays that were in flight when the node stopped.

A relaying node records an intent durably when it prepares a hop (`KeyStore.add_intent`), then
takes the keys without fsync when the hop is committed, deleting the intent in the same
transaction. After a crash the database is a prefix of the committed transactions (WAL frames are
replayed in order up to the last durable one), so an intent still present means its take was lost
or never happened; every take is in seq order from the master cursor and every later durable
commit would have kept it, so the keys such a lost take used are exactly the next ones after the
cursor. `recover_intents` consumes that many (ledger rows as the take would have written them) and
deletes the intents, in one durable transaction: a pad that may have left the node is never used
again; a relay that was only prepared costs its keys.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from .errors import KeyStoreError
from .types import MasterRequest

if TYPE_CHECKING:
    from .store import KeyStore

log = logging.getLogger(__name__)


def recover_intents(store: KeyStore) -> int:
    """Consume the keys of the intents left in the store (see the module docstring); returns how many."""
    rows = store._db().execute("SELECT relay_id, assoc_id, n, master_sae, slave_sae FROM intent").fetchall()
    if not rows:
        return 0
    left = {aid: a.avail_own for aid, a in store._assocs.items()}
    requests: list[MasterRequest] = []
    for _, aid, n, master, slave in rows:
        a = store._assocs.get(aid)
        if a is None:
            continue
        k = min(n, left[aid])
        left[aid] -= k
        lim = a.info.max_keys_per_request
        requests += [MasterRequest(aid, master, slave, min(lim, k - i), a.info.key_size_bits) for i in range(0, k, lim)]
    ids = [r[0] for r in rows]
    batch = store.begin_batch(requests, drop_intents=ids)
    assert batch is not None
    if not batch.began:  # nothing left to consume: the intents go alone
        store._db().execute("BEGIN IMMEDIATE")
        store._db().executemany("DELETE FROM intent WHERE relay_id = ?", [(r,) for r in ids])
        batch.began = True
    results = store.finish_batch(batch)
    failed = [r for r in results if isinstance(r, KeyStoreError)]
    if failed:
        raise failed[0]
    consumed = sum(len(r) for r in results)  # type: ignore[arg-type]
    log.warning("key store %s: %d relay hop(s) were in flight at the last stop; %d link keys they may "
                "have used are consumed", store.path, len(rows), consumed)
    return consumed

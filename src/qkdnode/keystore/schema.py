"""SQL schema of the key store (one SQLite file per node, owned by `KeyStore`)."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS association(
    assoc_id TEXT PRIMARY KEY,
    local_node_id TEXT NOT NULL,
    remote_node_id TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('link', 'relay')),
    master_parity INTEGER NOT NULL CHECK (master_parity IN (0, 1)),
    key_size_bits INTEGER NOT NULL CHECK (key_size_bits > 0 AND key_size_bits % 8 = 0),
    max_key_count INTEGER NOT NULL CHECK (max_key_count >= 0),
    max_keys_per_request INTEGER NOT NULL CHECK (max_keys_per_request > 0),
    created REAL NOT NULL,
    last_seq INTEGER NOT NULL DEFAULT -1,      -- highest seq ever offered to ingest
    dropped INTEGER NOT NULL DEFAULT 0         -- keys refused because the store was full
);
CREATE TABLE IF NOT EXISTS block(
    bid INTEGER PRIMARY KEY,
    assoc_id TEXT NOT NULL REFERENCES association(assoc_id),
    first_seq INTEGER NOT NULL,
    n INTEGER NOT NULL,
    created REAL NOT NULL,
    key_ids BLOB NOT NULL,   -- n x 16-byte UUIDs
    material BLOB NOT NULL   -- n x key size; zeros where delivered
);
CREATE UNIQUE INDEX IF NOT EXISTS block_by_seq ON block(assoc_id, first_seq);
CREATE TABLE IF NOT EXISTS delivery(
    assoc_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    key_id TEXT NOT NULL,
    master_sae TEXT NOT NULL,
    slave_sae TEXT NOT NULL,
    delivered_at REAL NOT NULL,
    PRIMARY KEY (assoc_id, seq)
) WITHOUT ROWID;
-- Link keys a prepared relay will take from this node's master half (see KeyStore.add_intent): a
-- crash may lose the (non-durable) take, never the intent, so the next open consumes that many.
CREATE TABLE IF NOT EXISTS intent(
    relay_id TEXT PRIMARY KEY,
    assoc_id TEXT NOT NULL REFERENCES association(assoc_id),
    n INTEGER NOT NULL CHECK (n > 0),
    master_sae TEXT NOT NULL,
    slave_sae TEXT NOT NULL
) WITHOUT ROWID;
-- One row whose update is the durable commit of KeyStore.sync (a durability barrier).
CREATE TABLE IF NOT EXISTS barrier(id INTEGER PRIMARY KEY CHECK (id = 0), n INTEGER NOT NULL);
INSERT OR IGNORE INTO barrier VALUES (0, 0);
"""

"""Local key management: the key store and its ETSI GS QKD 014 server.

`KeyStore` (store.py) keeps QKD keys per key association in SQLite; `Etsi014Server` (etsi014.py)
serves them to SAEs over mutual TLS; `GroupCommitter` (committer.py) joins concurrent deliveries
into one durable transaction. Management code only ever sees `Stats` (counts, never key bytes).
"""

from .committer import GroupCommitter
from .errors import (
    AssociationConflict,
    BadRequest,
    IngestError,
    InsufficientKeys,
    KeySizeNotSupported,
    KeysNotAvailable,
    KeyStoreError,
    RequestLimitExceeded,
    StorageError,
    Unauthorized,
    UnknownAssociation,
)
from .etsi014 import (
    AssociationResolver,
    Etsi014Server,
    NeighbourResolver,
    SaeDirectory,
    start_etsi014_server,
)
from .store import KeyStore
from .types import (
    Association,
    AssociationKind,
    Delivery,
    DeliveryRequest,
    KeyRecord,
    KeyState,
    MasterRequest,
    SlaveRequest,
    Stats,
)

__all__ = [
    "Association", "AssociationConflict", "AssociationKind", "AssociationResolver", "BadRequest",
    "Delivery", "DeliveryRequest", "Etsi014Server", "GroupCommitter", "IngestError",
    "InsufficientKeys", "KeyRecord", "KeySizeNotSupported", "KeyState", "KeyStore", "KeyStoreError",
    "KeysNotAvailable", "MasterRequest", "NeighbourResolver", "RequestLimitExceeded", "SaeDirectory",
    "SlaveRequest", "Stats", "StorageError", "Unauthorized", "UnknownAssociation",
    "start_etsi014_server",
]

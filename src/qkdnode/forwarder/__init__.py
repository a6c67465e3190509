"""Key forwarder: hop-by-hop key relay over gRPC (mutual TLS) between trusted neighbouring nodes.

`Forwarder` (relay.py) relays keys along the VIRT links of the 015 running datastore, which the SDN
agent hands it as a route table (`set_routes`); every hop is one-time-pad encrypted and
authenticated with a Wegman-Carter one-time MAC (mac.py), both keyed by the QKD link key of that
hop. `RelayCommitter` and `RelayResolver` (kms.py) plug it into the ETSI 014 server, so that an
enc_keys for an SAE of a node without a direct link relays the keys within the request.
The gRPC stubs (relay_pb2*.py) are generated from relay.proto at install time (setup.py).
"""

from .errors import RelayError, RelayUnavailable
from .kms import RelayCommitter, RelayResolver, attach_to_014
from .relay import RELAY_KEY_SIZE_BITS, Forwarder
from .routes import SAE_NAMESPACE, RelayRoute, routes_from_links, sae_uuid
from .service import Neighbour

__all__ = [
    "RELAY_KEY_SIZE_BITS", "SAE_NAMESPACE", "Forwarder", "Neighbour", "RelayCommitter", "RelayError",
    "RelayResolver", "RelayRoute", "RelayUnavailable", "attach_to_014", "routes_from_links", "sae_uuid",
]

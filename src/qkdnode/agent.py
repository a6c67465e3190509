"""The SDN agent: turns committed configuration into key-plane actions and key-plane state
(counts, rates, link status; never key bytes) into 015 operational data and notifications."""

from __future__ import annotations

import logging
from typing import Callable

from .datastore import Change
from .netconf.namespaces import QKD_NODE_NS, QKD_TYPES_NS

log = logging.getLogger(__name__)

StateSource = Callable[[], str]


class SdnAgent:
    """Owns the node's 015 operational state; subsystems of the key plane register sources."""

    name = "sdn-agent"

    def __init__(self) -> None:
        self.status = "OPERATING"
        self.sources: list[StateSource] = []
        self.change_handlers: list[Callable[[Change], None]] = []

    # Subsystem protocol: the agent itself refuses nothing yet; key-plane parts verify later.
    def verify(self, change: Change) -> None:
        return None

    def apply(self, change: Change) -> None:
        for handler in self.change_handlers:
            handler(change)

    def abort(self, change: Change) -> None:
        return None

    def state(self) -> str:
        """015 state: `qkdn_status` and whatever the key-plane sources report."""
        inner = "".join(src() for src in self.sources)
        return (
            f'<qkd_node xmlns="{QKD_NODE_NS}" xmlns:etsi-qkdn-types="{QKD_TYPES_NS}">'
            f"<qkdn_status>etsi-qkdn-types:{self.status}</qkdn_status>{inner}</qkd_node>"
        )

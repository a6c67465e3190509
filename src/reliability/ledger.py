"""The key ledger of a reliability run, computed from what the SAE clients actually received.

A master SAE's `enc_keys` answer *acknowledges* keys (ID and bytes) to that side; the slave SAE then
asks for them by ID with `dec_keys`. The ledger records both sides and finds:

* **reused**: a key ID handed out twice to one side, or the same key bytes under two IDs;
* **mismatched**: the slave got other bytes than the master for one key ID;
* **lost**: a key acknowledged to the master that the slave never got, although no kill cut one of
  the slave's requests for it (`cut`): a `dec_keys` whose reply a SIGKILL swallowed may have been
  durably delivered (ETSI 014 delivers at most once; the node answers after the commit), which
  is not a loss of the node's making and is counted on its own.

The node's own counters are never consulted.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass
class Flow:
    """One SAE pair in one direction: enc_keys at `master_node`, dec_keys at `slave_node`."""

    name: str
    master: str
    slave: str
    master_node: str
    slave_node: str
    relayed: bool
    nodes: tuple[str, ...]  # every node an enc_keys of this flow involves


@dataclass
class Ledger:
    master: dict[str, bytes] = field(default_factory=dict)  # key ID -> bytes acknowledged to the master
    slave: dict[str, bytes] = field(default_factory=dict)  # key ID -> bytes the slave received
    flow_of: dict[str, str] = field(default_factory=dict)
    by_material: dict[bytes, str] = field(default_factory=dict)
    cut: set[str] = field(default_factory=set)  # a dec_keys for these IDs was in flight at a kill
    gone: dict[str, str] = field(default_factory=dict)  # ID -> reason the slave's node refused it for good
    reused: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)

    def acknowledged(self, flow: str, keys: Iterable[tuple[str, bytes]]) -> None:
        for kid, material in keys:
            kid = kid.lower()
            if kid in self.master:
                self.reused.append(kid)
                continue
            other = self.by_material.get(material)
            if other is not None and other != kid:
                self.reused.append(kid)
            self.by_material[material] = kid
            self.master[kid] = material
            self.flow_of[kid] = flow

    def received(self, keys: Iterable[tuple[str, bytes]]) -> None:
        for kid, material in keys:
            kid = kid.lower()
            if kid in self.slave:
                self.reused.append(kid)
                continue
            self.slave[kid] = material
            if kid not in self.master or self.master[kid] != material:
                self.mismatched.append(kid)

    def mark_cut(self, key_ids: Iterable[str]) -> None:
        self.cut.update(k.lower() for k in key_ids)

    def refused_for_good(self, kid: str, reason: str) -> None:
        self.gone[kid.lower()] = reason

    def pending(self) -> list[str]:
        """Acknowledged to the master, not yet received by the slave, not refused for good."""
        return [k for k in self.master if k not in self.slave and k not in self.gone]

    @property
    def keys_lost(self) -> int:
        return sum(1 for k in self.master if k not in self.slave and k not in self.cut)

    @property
    def keys_cut(self) -> int:
        """Acknowledged keys the slave never got because a kill swallowed the reply to its request."""
        return sum(1 for k in self.master if k not in self.slave and k in self.cut)

    @property
    def keys_reused(self) -> int:
        return len(self.reused)

    def summary(self) -> dict[str, int]:
        return {"acknowledged": len(self.master), "received": len(self.slave), "lost": self.keys_lost,
                "cut": self.keys_cut, "reused": self.keys_reused, "mismatched": len(self.mismatched)}

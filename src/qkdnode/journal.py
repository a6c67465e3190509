"""Durable storage of the running datastore: a snapshot plus a journal of committed changes.

A commit appends the final content of every subtree it changed (or a deletion) to
`running.journal` and fsyncs it, instead of rewriting the whole datastore: the cost of a commit
follows the size of the change, not of the datastore. Every `compact_every` commits (and on
start-up) the snapshot `running.xml` is rewritten (temporary file, fsync, rename, directory
fsync) and the journal emptied. Replaying is idempotent, so a crash between the two steps is
harmless; a torn last record (a commit that never returned) is ignored.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import libyang

from .datatree import DataTree, node_path, print_nodes
from .edit import AppliedEdit, EditOp

log = logging.getLogger(__name__)

_DELETES = (EditOp.DELETE, EditOp.REMOVE)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class RunningStore:
    def __init__(self, ctx: libyang.Context, state_dir: Path, compact_every: int = 256) -> None:
        self.ctx = ctx
        self.state_dir = Path(state_dir)
        self.snapshot = self.state_dir / "running.xml"
        self.journal = self.state_dir / "running.journal"
        self.compact_every = compact_every
        self._records = 0

    def exists(self) -> bool:
        return self.snapshot.exists()

    def load(self) -> DataTree:
        """Snapshot + journal, fully validated; compacts the result."""
        tree = DataTree.parse(self.ctx, self.snapshot.read_text(), validate=False)
        replayed = 0
        if self.journal.exists():
            for line in self.journal.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    log.warning("ignoring a torn journal record (a commit that did not complete)")
                    break
                self._replay(tree, rec)
                replayed += 1
        tree.validate()
        if replayed:
            self.write_snapshot(tree)
        return tree

    def _replay(self, tree: DataTree, rec: dict[str, str]) -> None:
        existing = tree.find(rec["path"])
        if existing is not None:
            tree.delete_node(existing)
        if rec["op"] == "put":
            frag = DataTree.parse(self.ctx, rec["xml"], validate=False)
            tree.merge_tree(frag)

    def write_snapshot(self, tree: DataTree) -> None:
        tmp = self.snapshot.with_suffix(".xml.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, tree.print().encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.snapshot)
        if self.journal.exists():
            os.unlink(self.journal)
        _fsync_dir(self.state_dir)
        self._records = 0

    def record(self, tree: DataTree, edits: list[AppliedEdit]) -> None:
        """Make a committed change durable before the commit is acknowledged."""
        if (
            not self.snapshot.exists()
            or self._records + len(edits) > self.compact_every
            or any(e.path == "/" for e in edits)
        ):
            self.write_snapshot(tree)
            return
        lines = []
        for e in edits:
            if e.operation in _DELETES:
                lines.append(json.dumps({"op": "del", "path": e.path}))
                continue
            node = tree.find(e.path)
            if node is None:  # changed again later in the same commit, then removed
                lines.append(json.dumps({"op": "del", "path": e.path}))
                continue
            frag = DataTree(self.ctx)
            try:
                frag.merge_node(node, with_parents=True, recursive=True)
                xml = print_nodes(frag.root)
            finally:
                frag.free()
            lines.append(json.dumps({"op": "put", "path": node_path(node), "xml": xml}))
        new_file = not self.journal.exists()
        fd = os.open(self.journal, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, ("\n".join(lines) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        if new_file:
            _fsync_dir(self.state_dir)
        self._records += len(edits)

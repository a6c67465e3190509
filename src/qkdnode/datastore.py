"""The node's NETCONF datastores: running (persisted), candidate (shared, RFC 6241 8.3), operational.

A commit is verify -> apply -> (abort restores): every registered subsystem may refuse the change
in `verify`, and then nothing is applied and running stays as it was. Running is durably written
(temporary file, fsync, rename, fsync of the directory) before a commit returns. Operational
state comes from providers at read time and is never stored in running.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Protocol

import libyang

from .datatree import DataTree
from .journal import RunningStore
from .edit import AppliedEdit, EditOp, ErrorOption, apply_edit, parse_edit, split_valueless_removals
from .netconf import errors as E

if TYPE_CHECKING:
    from .netconf.filters import ListKeys

log = logging.getLogger(__name__)


class Datastore(str, Enum):
    RUNNING = "running"
    CANDIDATE = "candidate"
    STARTUP = "startup"
    OPERATIONAL = "operational"


class TestOption(str, Enum):
    TEST_THEN_SET = "test-then-set"
    SET = "set"
    TEST_ONLY = "test-only"


@dataclass
class Change:
    """What a commit changes: the old and new running trees and the edits that led there."""

    old: DataTree
    new: DataTree
    edits: list[AppliedEdit] = field(default_factory=list)
    session_id: int = 0


class Subsystem(Protocol):
    """A part of the node that acts on committed configuration (SDN agent, TAPI switch...)."""

    name: str

    def verify(self, change: Change) -> None:
        """Raise an `RpcError` to refuse the change; nothing has been applied yet."""

    def apply(self, change: Change) -> None:
        """The change is committed: act on it."""

    def abort(self, change: Change) -> None:
        """A later subsystem refused the change after this one verified it: forget it."""


StateProvider = Callable[[], str]
CommitListener = Callable[[Change], None]


class Datastores:
    """running + candidate + locks + commit, over one libyang context."""

    def __init__(
        self,
        ctx: libyang.Context,
        state_dir: Path,
        initial_config: Callable[[], str] | None = None,
    ) -> None:
        self.ctx = ctx
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.store = RunningStore(ctx, self.state_dir)
        self.subsystems: list[Subsystem] = []
        self.providers: list[StateProvider] = []
        self.listeners: list[CommitListener] = []
        self.locks: dict[Datastore, int] = {}
        self._candidate: DataTree | None = None  # None: same as running
        self._candidate_valid = True
        self._candidate_edits: list[AppliedEdit] = []
        self._cache: dict[tuple[Datastore, str], str] = {}
        self._list_keys: "ListKeys | None" = None
        if self.store.exists():
            self.running = self.store.load()
        elif initial_config is not None:
            self.running = DataTree.parse(ctx, initial_config())
            self.store.write_snapshot(self.running)
        else:
            self.running = DataTree(ctx)

    # -- locks (RFC 6241 7.5, 7.6) -----------------------------------------------------------
    def lock(self, ds: Datastore, session_id: int) -> None:
        self._check_lockable(ds)
        holder = self.locks.get(ds)
        if holder is not None:
            raise E.LockDenied(
                message=f"{ds.value} is locked by session {holder}",
                info={"session-id": str(holder)},
            )
        if ds is Datastore.CANDIDATE and self._candidate is not None:
            raise E.LockDenied(
                message="candidate has uncommitted changes: commit or discard-changes first",
                info={"session-id": "0"},
            )
        self.locks[ds] = session_id

    def unlock(self, ds: Datastore, session_id: int) -> None:
        self._check_lockable(ds)
        holder = self.locks.get(ds)
        if holder is None:
            raise E.OperationFailed(message=f"{ds.value} is not locked")
        if holder != session_id:
            raise E.OperationFailed(
                message=f"{ds.value} is locked by session {holder}, not by this session",
                info={"session-id": str(holder)},
            )
        self._release(ds)

    def release_session(self, session_id: int) -> None:
        """A session ended: drop its locks (and its uncommitted candidate changes)."""
        for ds, holder in list(self.locks.items()):
            if holder == session_id:
                self._release(ds)

    def _release(self, ds: Datastore) -> None:
        del self.locks[ds]
        if ds is Datastore.CANDIDATE:
            # RFC 6241 8.3.5.2: releasing the candidate lock discards its uncommitted changes
            self.discard_changes(0, force=True)

    @staticmethod
    def _check_lockable(ds: Datastore) -> None:
        if ds not in (Datastore.RUNNING, Datastore.CANDIDATE):
            raise E.InvalidValue(message=f"datastore {ds.value} is not supported", info={"bad-element": ds.value})

    def _check_writable(self, ds: Datastore, session_id: int) -> None:
        holder = self.locks.get(ds)
        if holder is not None and holder != session_id:
            raise E.InUse(
                message=f"{ds.value} is locked by session {holder}",
                info={"session-id": str(holder)},
                error_type=E.ErrorType.PROTOCOL,
            )

    # -- reading -------------------------------------------------------------------------------
    def config_tree(self, ds: Datastore) -> DataTree:
        if ds is Datastore.RUNNING:
            return self.running
        if ds is Datastore.CANDIDATE:
            return self._candidate if self._candidate is not None else self.running
        raise E.InvalidValue(message=f"datastore {ds.value} is not supported", info={"bad-element": ds.value})

    def get_config_xml(self, ds: Datastore, with_defaults: str = "explicit") -> str:
        key = (ds, with_defaults)
        cached = self._cache.get(key)
        if cached is None:
            cached = self.config_tree(ds).print(with_defaults=with_defaults)
            self._cache[key] = cached
        return cached

    def operational_tree(self) -> DataTree:
        """running + state from every provider (a fresh tree, owned by the caller)."""
        tree = self.running.dup()
        for provider in self.providers:
            xml = provider()
            if not xml:
                continue
            state = DataTree.parse(self.ctx, xml, config_only=False, validate=False, strict=True)
            tree.merge_tree(state)
        return tree

    @property
    def list_keys(self) -> "ListKeys":
        """List keys of the schema (for paths of edit elements), computed once."""
        if self._list_keys is None:
            from .netconf.filters import ListKeys

            self._list_keys = ListKeys(self.ctx)
        return self._list_keys

    @property
    def candidate_modified(self) -> bool:
        return self._candidate is not None

    # -- writing -------------------------------------------------------------------------------
    def edit_config(
        self,
        target: Datastore,
        config_xml: str,
        session_id: int,
        default_op: EditOp = EditOp.MERGE,
        test_option: TestOption = TestOption.TEST_THEN_SET,
        error_option: ErrorOption = ErrorOption.STOP,
    ) -> list[AppliedEdit]:
        if target is not Datastore.CANDIDATE:
            raise E.OperationNotSupported(
                message=f"edit-config on {target.value} is not supported: edit candidate, then commit",
                info={"bad-element": target.value},
            )
        self._check_writable(target, session_id)
        config_xml, removals = split_valueless_removals(self.ctx, self.config_tree(target), config_xml, self.list_keys)
        edit = parse_edit(self.ctx, config_xml)
        work = self.config_tree(target).dup()
        try:
            try:
                applied = apply_edit(self.ctx, work, edit, default_op, error_option, removals)
            except E.RpcErrors as errs:
                partial: list[AppliedEdit] = getattr(errs, "applied", [])
                if error_option is not ErrorOption.CONTINUE or not partial:
                    raise
                # continue-on-error: keep what worked, still report every error
                self._install_candidate(work, partial, validated=False)
                work = None  # type: ignore[assignment]
                raise
            if test_option is not TestOption.SET:
                applied = applied + _deletions(work.validate())
            if test_option is TestOption.TEST_ONLY:
                return applied
            self._install_candidate(work, applied, validated=test_option is not TestOption.SET)
            work = None  # type: ignore[assignment]
            return applied
        finally:
            edit.free()
            if work is not None:
                work.free()

    def _install_candidate(self, tree: DataTree, applied: list[AppliedEdit], *, validated: bool) -> None:
        old = self._candidate
        self._candidate = tree
        self._candidate_valid = validated
        self._candidate_edits.extend(applied)
        self._invalidate(Datastore.CANDIDATE)
        if old is not None:
            old.free()

    def _invalidate(self, ds: Datastore) -> None:
        for key in [k for k in self._cache if k[0] is ds]:
            del self._cache[key]

    def validate(self, source: Datastore | str) -> None:
        """`<validate>`: a datastore or inline `<config>` content (str)."""
        if not isinstance(source, Datastore):  # inline <config> (Datastore is a str enum too)
            tree = DataTree.parse(self.ctx, source, validate=False)
            try:
                tree.validate()
            finally:
                tree.free()
            return
        tree = self.config_tree(source)
        if source is Datastore.CANDIDATE and self._candidate is not None:
            self._candidate_edits.extend(_deletions(self._candidate.validate()))
            self._candidate_valid = True
        elif source is Datastore.RUNNING:
            probe = tree.dup()
            try:
                probe.validate()
            finally:
                probe.free()

    def discard_changes(self, session_id: int, *, force: bool = False) -> None:
        if not force:
            self._check_writable(Datastore.CANDIDATE, session_id)
        if self._candidate is not None:
            self._candidate.free()
        self._candidate = None
        self._candidate_valid = True
        self._candidate_edits = []
        self._invalidate(Datastore.CANDIDATE)

    def copy_config(self, target: Datastore, source: Datastore | str, session_id: int) -> None:
        if target is not Datastore.CANDIDATE:
            raise E.OperationNotSupported(
                message=f"copy-config to {target.value} is not supported: copy to candidate, then commit",
                info={"bad-element": target.value},
            )
        self._check_writable(target, session_id)
        if not isinstance(source, Datastore):  # inline <config> (Datastore is a str enum too)
            tree = DataTree.parse(self.ctx, source, validate=False)
        else:
            if source is target:
                return
            tree = self.config_tree(source).dup()
        try:
            tree.validate()
        except Exception:
            tree.free()
            raise
        self._install_candidate(tree, [AppliedEdit(EditOp.REPLACE, "/")], validated=True)

    def delete_config(self, target: Datastore, session_id: int) -> None:
        if target is not Datastore.CANDIDATE:
            raise E.OperationNotSupported(
                message=f"delete-config of {target.value} is not allowed", info={"bad-element": target.value}
            )
        self._check_writable(target, session_id)
        self._install_candidate(DataTree(self.ctx), [AppliedEdit(EditOp.DELETE, "/")], validated=False)

    def commit(self, session_id: int) -> Change | None:
        """candidate -> running, all-or-nothing. Returns the change, or None when nothing changed."""
        self._check_writable(Datastore.RUNNING, session_id)
        self._check_writable(Datastore.CANDIDATE, session_id)
        if self._candidate is None:
            return None
        new = self._candidate
        if not self._candidate_valid:
            self._candidate_edits.extend(_deletions(new.validate()))
            self._candidate_valid = True
        change = Change(old=self.running, new=new, edits=list(self._candidate_edits), session_id=session_id)
        verified: list[Subsystem] = []
        try:
            for sub in self.subsystems:
                sub.verify(change)
                verified.append(sub)
            self.store.record(new, change.edits)
        except Exception as exc:
            for sub in reversed(verified):
                try:
                    sub.abort(change)
                except Exception:  # pragma: no cover - abort must not mask the refusal
                    log.exception("abort failed in %s", sub.name)
            if isinstance(exc, (E.RpcError, E.RpcErrors)):
                raise
            if isinstance(exc, OSError):
                raise E.OperationFailed(message=f"cannot store running datastore: {exc}") from exc
            raise
        old = self.running
        self.running = new
        self._candidate = None
        self._candidate_edits = []
        self._invalidate(Datastore.RUNNING)
        self._invalidate(Datastore.CANDIDATE)
        for sub in self.subsystems:
            try:
                sub.apply(change)
            except Exception:
                log.exception("subsystem %s failed to apply a committed change", sub.name)
        for listener in self.listeners:
            try:
                listener(change)
            except Exception:
                log.exception("commit listener failed")
        change.old = DataTree(self.ctx)  # the old tree is freed below; listeners had their turn
        old.free()
        return change

    def replace_running(self, xml: str) -> None:
        """Load a whole configuration (start-up of a node from its config file)."""
        tree = DataTree.parse(self.ctx, xml)
        self.store.write_snapshot(tree)
        old, self.running = self.running, tree
        self._invalidate(Datastore.RUNNING)
        old.free()


def _deletions(paths: list[str]) -> list[AppliedEdit]:
    """Nodes validation deleted (their 'when' became false): part of the change like any edit."""
    return [AppliedEdit(EditOp.DELETE, p) for p in paths]

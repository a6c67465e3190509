"""All-or-nothing configuration changes over several nodes (NETCONF candidate datastores).

    lock candidate everywhere   (lock-denied: retry with backoff, bounded)
    edit-config candidate everywhere
    validate candidate everywhere
    commit everywhere
    unlock everywhere

Any failure before the commits: discard-changes and unlock everywhere, nothing changed. A commit
refused on one node after others committed: the committed nodes get their compensating edit
(`NodeEdit.undo`) and commit it, still under our lock. The error names the node that refused and
its rpc-error (tag, message, path).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ncclient.operations.rpc import RPCError

from .session import NodeSession, NodeUnreachable, PipelineError, RpcFailure, backoff_delays

log = logging.getLogger(__name__)

NC_NS = "urn:ietf:params:xml:ns:netconf:base:1.0"


def config_element(inner_xml: str) -> str:
    """`<config>` around edit content (ncclient wants the config element itself)."""
    return f'<config xmlns="{NC_NS}" xmlns:nc="{NC_NS}">{inner_xml}</config>'


@dataclass
class NodeEdit:
    session: NodeSession
    config: str  # content of <config> (elements in their own namespaces; nc:operation allowed)
    undo: str | None = None  # content of <config> that restores running as it was


@dataclass
class TransactionError(Exception):
    node: str
    phase: str  # lock | edit-config | validate | commit | session
    failure: RpcFailure
    reverted: list[str] = field(default_factory=list)
    not_reverted: list[str] = field(default_factory=list)  # committed nodes whose undo failed

    def __post_init__(self) -> None:
        super().__init__(str(self))

    def __str__(self) -> str:
        msg = f"node {self.node} refused {self.phase}: {self.failure}"
        if self.reverted:
            msg += f" (reverted on {', '.join(self.reverted)})"
        if self.not_reverted:
            msg += f"; NOT reverted on {', '.join(self.not_reverted)}"
        return msg

    def to_json(self) -> dict[str, Any]:
        return {"message": str(self), "node": self.node, "phase": self.phase, "error-tag": self.failure.tag,
                "error-message": self.failure.message, "error-path": self.failure.path,
                "reverted": self.reverted, "not-reverted": self.not_reverted}


def _failure(exc: BaseException) -> RpcFailure:
    if isinstance(exc, RPCError):
        return RpcFailure.of(exc)
    if isinstance(exc, NodeUnreachable):
        return RpcFailure("session-lost", str(exc.cause) or type(exc.cause).__name__, None)
    return RpcFailure(type(exc).__name__, str(exc) or None, None)


class _Phase(Exception):
    def __init__(self, phase: str, exc: BaseException) -> None:
        super().__init__(phase)
        self.phase, self.exc = phase, exc


def _phase_of(exc: BaseException | None) -> tuple[str, RpcFailure]:
    if isinstance(exc, _Phase):
        return exc.phase, _failure(exc.exc)
    if isinstance(exc, asyncio.TimeoutError):
        return "session", RpcFailure("timeout", "no reply in time", None)
    return "session", _failure(exc)  # type: ignore[arg-type]


def _first_refusal(failed: Sequence[tuple["NodeEdit", BaseException | None]]) -> tuple["NodeEdit", BaseException | None]:
    """The failure to report: a node's refusal rather than a lock we could not get because of it."""
    order = {"edit-config": 0, "validate": 1, "session": 2, "lock": 3}
    return min(failed, key=lambda f: order.get(_phase_of(f[1])[0], 9))


class Transaction:
    """One change over several nodes. `await Transaction(edits).run()`."""

    def __init__(self, edits: list[NodeEdit], *, lock_attempts: int = 8, timeout: float = 30.0) -> None:
        names = [e.session.name for e in edits]
        if len(set(names)) != len(names):
            raise ValueError("one NodeEdit per node")
        self.edits = edits
        self.lock_attempts = lock_attempts
        self.timeout = timeout
        self.locked: list[NodeEdit] = []

    async def _each(self, edits: list[NodeEdit], fn: Callable[[NodeEdit], Awaitable[Any]]) -> list[tuple[NodeEdit, BaseException | None]]:
        results = await asyncio.gather(*(asyncio.wait_for(fn(e), self.timeout) for e in edits), return_exceptions=True)
        out: list[tuple[NodeEdit, BaseException | None]] = []
        for e, r in zip(edits, results):
            if isinstance(r, BaseException) and not isinstance(r, Exception):
                raise r  # cancellation and the like
            out.append((e, r if isinstance(r, Exception) else None))
        return out

    async def _lock(self, e: NodeEdit) -> None:
        delays = backoff_delays(self.lock_attempts)
        for i, delay in enumerate(delays):
            try:
                await e.session.call(lambda m: m.lock(target="candidate"))
                return
            except RPCError as exc:
                if exc.tag != "lock-denied" or i == len(delays) - 1:
                    raise
                log.info("%s: candidate lock denied (%s), retrying in %.0f ms", e.session.name, exc.message, delay * 1000)
                await asyncio.sleep(delay)

    async def _release(self, edits: list[NodeEdit]) -> None:
        """discard-changes + unlock (unlocking discards too; both, in case the lock was lost)."""

        async def release(e: NodeEdit) -> None:
            def fn(m: Any) -> None:
                try:
                    m.discard_changes()
                finally:
                    m.unlock(target="candidate")

            await e.session.call(fn)

        for e, exc in await self._each(edits, release):
            if exc is not None:
                log.warning("%s: releasing the candidate failed: %s", e.session.name, _failure(exc))

    async def _prepare(self, e: NodeEdit) -> None:
        """lock, edit-config, validate on one node (the nodes are prepared concurrently)."""
        try:
            await self._lock(e)
        except Exception as exc:
            raise _Phase("lock", exc) from exc
        self.locked.append(e)
        cfg = config_element(e.config)
        try:  # edit-config and validate pipelined: one round trip
            await e.session.pipeline([
                lambda m: m.edit_config(config=cfg, target="candidate", error_option="rollback-on-error"),
                lambda m: m.validate(source="candidate"),
            ])
        except PipelineError as exc:
            raise _Phase(("edit-config", "validate")[exc.index], exc.cause) from exc
        except Exception as exc:
            raise _Phase("edit-config", exc) from exc

    async def run(self) -> None:
        edits = [e for e in self.edits if e.config]
        if not edits:
            return
        # 1. lock, edit-config and validate everywhere; nothing is committed before all succeeded
        self.locked = []
        failed = [(e, exc) for e, exc in await self._each(edits, self._prepare) if exc is not None]
        if failed:
            await self._release(list(self.locked))
            e, exc = _first_refusal(failed)
            raise TransactionError(e.session.name, *_phase_of(exc))
        # 2. commit everywhere
        results = await self._each(edits, self._commit)
        committed = [e for e, exc in results if exc is None]
        failed = [(e, exc) for e, exc in results if exc is not None]
        if failed:
            reverted, not_reverted = await self._compensate(committed)
            await self._release(edits)
            e, exc = failed[0]
            raise TransactionError(e.session.name, "commit", _failure(exc), reverted, not_reverted)  # type: ignore[arg-type]
        # 3. unlock
        for e, exc in await self._each(edits, lambda e: e.session.call(lambda m: m.unlock(target="candidate"))):
            if exc is not None:
                log.warning("%s: unlock after commit failed: %s", e.session.name, _failure(exc))

    @staticmethod
    async def _commit(e: NodeEdit) -> None:
        await e.session.call(lambda m: m.commit())

    async def _compensate(self, committed: list[NodeEdit]) -> tuple[list[str], list[str]]:
        async def undo(e: NodeEdit) -> None:
            if e.undo is None:
                raise RuntimeError("no compensating edit")
            cfg = config_element(e.undo)

            def fn(m: Any) -> None:
                m.discard_changes()
                m.edit_config(config=cfg, target="candidate")
                m.commit()

            await e.session.call(fn)

        reverted, not_reverted = [], []
        for e, exc in await self._each(committed, undo):
            if exc is None:
                reverted.append(e.session.name)
            else:
                log.error("%s: compensating edit failed: %s", e.session.name, _failure(exc))
                not_reverted.append(e.session.name)
        return reverted, not_reverted


async def transact(edits: list[NodeEdit], **kw: Any) -> None:
    await Transaction(edits, **kw).run()

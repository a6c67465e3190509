"""The switch agent: a datastore subsystem turning TAPI connectivity services into cross-connects.

verify() plans the cross-connects of the new running datastore and refuses the commit (an
`<rpc-error>` whose error-path names the offending service, end-point or SIP) when a service
cannot be made; apply() reports the full cross-connect set to the optical plant stub (the
switch's "hardware") in the background, retrying while the plant is unreachable. The state
provider serves the topology and the connections, marked ENABLED/INSTALLED once the plant
has accepted the current set.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Callable

import libyang

from ..datastore import Change
from ..datatree import DataTree, print_nodes, xml_path
from ..netconf import errors as E
from .model import CONTEXT_PATH, CrossConnect, Problem, Switch, TapiConfig, plan_cross_connects, sip_problems
from .render import Realised, initial_config_xml, state_xml

if TYPE_CHECKING:
    from ..lightpath import FabricClient

log = logging.getLogger(__name__)

_ERRORS: dict[str, type[E.RpcError]] = {
    "in-use": E.InUse,
    "invalid-value": E.InvalidValue,
    "missing-element": E.MissingElement,
    "not-supported": E.OperationNotSupported,
}


def read_tapi(tree: DataTree) -> TapiConfig:
    node = tree.find(CONTEXT_PATH)
    return TapiConfig.parse(print_nodes(node, siblings=False) if node is not None else "")


def _touches_tapi(change: Change) -> bool:
    return any(e.path == "/" or e.path.startswith("/tapi-common:") for e in change.edits)


class SwitchAgent:
    """Owns the TAPI part of the node: the switch's services, cross-connects and state."""

    name = "tapi-switch"

    def __init__(self, ctx: libyang.Context, switch: Switch | None,
                 fabric: Callable[[], "FabricClient | None"] = lambda: None) -> None:
        self.ctx = ctx
        self.switch = switch
        self._fabric = fabric
        self.config = TapiConfig()
        self.cross_connects: list[CrossConnect] = []
        self._pending: tuple[TapiConfig, list[CrossConnect]] | None = None
        self._confirmed: list[list[int]] | None = None  # the set the plant accepted last
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # -- configuration ---------------------------------------------------------------------------
    def initial_config_xml(self) -> str:
        return initial_config_xml(self.switch) if self.switch is not None else ""

    def load(self, running: DataTree) -> None:
        self.config = read_tapi(running)
        self.cross_connects, problems = plan_cross_connects(self.switch, self.config)
        for p in problems:  # running predates a rule: keep serving, make what can be made
            log.warning("stored TAPI service not realised: %s", p.message)

    def verify(self, change: Change) -> None:
        self._pending = None
        if not _touches_tapi(change):
            return
        new = read_tapi(change.new)
        xcs, problems = plan_cross_connects(self.switch, new, self.config.services)
        problems += sip_problems(self.switch, new, self.config)
        if problems:
            errors = [self._rpc_error(p) for p in problems]
            raise errors[0] if len(errors) == 1 else E.RpcErrors(errors)
        self._pending = (new, xcs)

    def apply(self, change: Change) -> None:
        if self._pending is None:
            return
        self.config, self.cross_connects = self._pending
        self._pending = None
        self._wake.set()

    def abort(self, change: Change) -> None:
        self._pending = None

    def _rpc_error(self, p: Problem) -> E.RpcError:
        path, nsmap = xml_path(self.ctx, p.path)
        info = {"bad-element": p.bad_element} if p.bad_element else {}
        return _ERRORS[p.kind](message=p.message, error_type=E.ErrorType.APPLICATION, path=path,
                               path_namespaces=nsmap, app_tag=p.app_tag, info=info)

    # -- the switch hardware (optical plant stub) ------------------------------------------------
    def fabric_entries(self) -> list[list[int]]:
        return [xc.to_fabric() for xc in self.cross_connects if xc.active]

    async def start(self) -> None:
        if self.switch is None:
            return
        self._task = asyncio.get_running_loop().create_task(self._reporter(), name=f"tapi-report-{self.switch.name}")
        self._wake.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def _reporter(self) -> None:
        """Send the current cross-connect set whenever it changed; retry while the plant is away."""
        assert self.switch is not None
        backoff = 0.2
        while True:
            await self._wake.wait()
            self._wake.clear()
            entries = self.fabric_entries()
            fabric = self._fabric()
            if fabric is None:
                log.warning("switch %s: no optical plant configured (`fabric:`), cross-connects not made",
                            self.switch.name)
                self._confirmed = None
                continue
            try:
                await fabric.report_switch(self.switch.name, entries, self.switch.frequencies())
            except asyncio.CancelledError:
                raise
            except RuntimeError as exc:  # the plant refused the set: retrying will not help
                log.error("switch %s: %s", self.switch.name, exc)
                self._confirmed = None
                continue
            except Exception as exc:  # unreachable: the commit stands, the hardware catches up
                log.warning("switch %s: cannot reach the optical plant (%s: %s); retrying", self.switch.name,
                            type(exc).__name__, exc)
                self._confirmed = None
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                self._wake.set()
                continue
            backoff = 0.2
            self._confirmed = entries
            log.info("switch %s: %d cross-connect(s) made", self.switch.name, len(entries))

    # -- operational state -----------------------------------------------------------------------
    def state(self) -> str:
        if self.switch is None or not self.config.present:
            return ""
        realised = Realised(tuple(self.cross_connects), self._confirmed == self.fabric_entries())
        end_points = {s.uuid: (s.end_points[0].local_id, s.end_points[1].local_id)
                      for s in self.config.services if len(s.end_points) == 2}
        return state_xml(self.switch, set(self.config.sips), realised, end_points,
                         [s.uuid for s in self.config.services])

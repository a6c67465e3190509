"""Crash consistency (issue #9), bounded: `reliability.crash` on a `qkdnet up` chain a - b - c with SAE
clients pulling ETSI 014 keys at both ends (relayed a..c both ways, direct a->b and c->b) while a node
(end or middle) is SIGKILLed at random moments and restarted, 10 cycles. The ledger comes from what the
SAE clients received: no key lost, none delivered twice, both sides' bytes identical; the key stores
left on disk hold the same bytes under the same key ID at both ends of every association. The long
version is `make crash` (100 cycles)."""

from __future__ import annotations

from pathlib import Path

import pytest

from reliability.crash import crash_run

SUITE_BUDGET_S = 120.0
CYCLES = 10


@pytest.mark.timeout(300)
async def test_sigkill_cycles_lose_nothing_and_deliver_nothing_twice(tmp_path: Path) -> None:
    report = await crash_run(CYCLES, tmp_path, seed=20261127)
    s = report.ledger.summary()
    assert report.cycles == CYCLES and sum(report.kills.values()) == CYCLES
    assert report.kills_in_flight > 0, "no kill landed while a request was in flight"
    assert s["received"] > 100 and report.outcomes["dec 200"] > 0
    assert s["reused"] == 0, report.ledger.reused[:5]
    assert s["mismatched"] == 0, report.ledger.mismatched[:5]
    lost = [k for k in report.ledger.master if k not in report.ledger.slave and k not in report.ledger.cut]
    assert s["lost"] == 0, [(k, report.ledger.flow_of[k], report.key_errors.get(k)) for k in lost[:5]]
    assert not report.association_mismatches, report.association_mismatches[:5]
    assert not report.not_recovered and not report.dead_at_end, (report.not_recovered, report.dead_at_end)
    assert all(f.met() for f in report.figures(CYCLES)), [f.line() for f in report.figures(CYCLES)]

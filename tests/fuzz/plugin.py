"""pytest plugin (`-p fuzz.plugin`, used by `make fuzz`): print the fuzz tally in the bench format."""

from __future__ import annotations

from typing import Any

from .driver import LONG, SEED, TALLY


def pytest_terminal_summary(terminalreporter: Any) -> None:
    terminalreporter.section("reliability figures")
    terminalreporter.write_line(f"# fuzz mode {'long' if LONG else 'bounded'}, seed {SEED} (QKDNET_FUZZ_SEED)")
    for line in TALLY.bench_lines():
        terminalreporter.write_line(line)
    for example in TALLY.bad_examples:
        terminalreporter.write_line(f"# bad answer: {example}")

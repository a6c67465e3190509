"""The JSON result of one use case run (written by `qkd-usecase --out FILE`).

    {"name": "uc1-encryptors", "kind": "encryptor", "served": true, "reason": "",
     "metrics": {"throughput": {"value": 41.2, "unit": "Mbit/s"}, ...},
     "window": {"start": 1718000000.1, "end": 1718000010.4},          # Unix time
     "prometheus": {"qkd_etsi014_requests_total{code=\"200\",endpoint=\"enc_keys\",sae=\"SAE_A\"}": 12, ...},
     "client": {... the same series as counted by the use case's own 014 clients ...},
     "mismatches": []}

`served` is true only when real data went through and verified end to end, and the
Prometheus deltas equal the client counts for every series.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Metric:
    value: float
    unit: str


@dataclass
class UseCaseResult:
    name: str
    kind: str
    served: bool = False
    reason: str = ""
    metrics: dict[str, Metric] = field(default_factory=dict)
    window: dict[str, float] = field(default_factory=dict)
    prometheus: dict[str, int] | None = None
    client: dict[str, int] = field(default_factory=dict)
    mismatches: list[str] = field(default_factory=list)
    info: dict[str, str] = field(default_factory=dict)  # e.g. {"kem": "ML-KEM-768"}

    def metric(self, name: str, value: float, unit: str) -> None:
        self.metrics[name] = Metric(round(float(value), 6), unit)

    def start(self) -> None:
        self.window["start"] = time.time()

    def end(self) -> None:
        self.window["end"] = time.time()

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        tmp.replace(path)


def failed(name: str, kind: str, reason: str) -> dict[str, Any]:
    """The result of a use case whose process produced none."""
    return UseCaseResult(name, kind, served=False, reason=reason).to_json()


class NotServed(Exception):
    """The use case could not be served end to end; the message is the result's `reason`."""

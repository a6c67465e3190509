"""`qkdnet plot`: PNG plots of secret key rate and QBER (or SNR for CV links) over time, per link.

Reads `DIR/telemetry.csv` (orchestrator.telemetry) and writes one PNG per PHYS link, in the manner
of Fig. 5 of the MadQCI paper: the secret key rate on top, the QBER (DV) or SNR (CV) below, on a
shared time axis. Both ends of a link report it; a plot uses the end with the most samples and
names both in its title. matplotlib with the Agg backend (no display needed).
"""

from __future__ import annotations

import datetime as dt
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from .telemetry import read_rows


class PlotError(Exception):
    """Nothing to plot (no telemetry file, or no rows)."""


@dataclass
class LinkSeries:
    qkdl_id: str
    node: str  # the end the samples come from
    ends: list[str]  # every node that reported the link
    t: list[float] = field(default_factory=list)
    skr: list[float] = field(default_factory=list)
    qber: list[float | None] = field(default_factory=list)
    snr: list[float | None] = field(default_factory=list)

    @property
    def is_cv(self) -> bool:
        return all(q is None for q in self.qber) and any(s is not None for s in self.snr)


def _num(text: str | None) -> float | None:
    return float(text) if text not in (None, "") else None


def link_series(rows: list[dict[str, str]]) -> list[LinkSeries]:
    """One series per qkdl_id, from the reporting node with the most samples (ties: by name)."""
    by: dict[str, dict[str, list[dict[str, str]]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r.get("qkdl_id") and r.get("skr_bps") not in (None, ""):
            by[r["qkdl_id"]][r["node"]].append(r)
    out = []
    for qkdl_id, per_node in sorted(by.items()):
        node = max(sorted(per_node), key=lambda n: len(per_node[n]))
        s = LinkSeries(qkdl_id, node, sorted(per_node))
        for r in sorted(per_node[node], key=lambda r: float(r["timestamp"])):
            s.t.append(float(r["timestamp"]))
            s.skr.append(float(r["skr_bps"]))
            s.qber.append(_num(r.get("qber")))
            s.snr.append(_num(r.get("snr_db")))
        out.append(s)
    return out


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def plot_link(s: LinkSeries, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    times = [dt.datetime.fromtimestamp(t) for t in s.t]
    fig, (ax_skr, ax_q) = plt.subplots(2, 1, sharex=True, figsize=(8, 5), dpi=100)
    try:
        ax_skr.plot(times, [v / 1000 for v in s.skr], color="tab:blue", marker=".", linewidth=1)
        ax_skr.set_ylabel("secret key rate (kbit/s)")
        ax_skr.set_ylim(0, 1.2 * max(s.skr) / 1000 if max(s.skr) > 0 else 1)
        ax_skr.grid(alpha=0.3)
        if s.is_cv:
            pts = [(t, v) for t, v in zip(times, s.snr) if v is not None]
            ax_q.set_ylabel("SNR (dB)")
        else:
            pts = [(t, 100 * v) for t, v in zip(times, s.qber) if v is not None]
            ax_q.set_ylabel("QBER (%)")
            ax_q.set_ylim(0, 1.2 * max((p[1] for p in pts), default=0) or 1)
        if pts:
            ax_q.plot([p[0] for p in pts], [p[1] for p in pts], color="tab:red", marker=".", linewidth=1)
        ax_q.grid(alpha=0.3)
        ax_q.set_xlabel("time")
        ax_q.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))
        fig.autofmt_xdate()
        ends = " - ".join(s.ends)
        fig.suptitle(f"link {s.qkdl_id[:8]} ({ends}), reported by {s.node}")
        fig.tight_layout()
        path = out / f"link-{_safe('-'.join(s.ends))}-{_safe(s.qkdl_id[:8])}.png"
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)
    return path


def plot_telemetry(csv_path: Path | str, out_dir: Path | str) -> list[Path]:
    """One PNG per link in `out_dir` (created); returns the files written."""
    csv_path, out_dir = Path(csv_path), Path(out_dir)
    if not csv_path.exists():
        raise PlotError(f"no telemetry file {csv_path} (run `qkdnet up` on this state dir first)")
    series = link_series(read_rows(csv_path))
    if not series:
        raise PlotError(f"{csv_path} holds no link samples")
    out_dir.mkdir(parents=True, exist_ok=True)
    return [plot_link(s, out_dir) for s in series]

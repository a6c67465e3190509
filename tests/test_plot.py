"""Telemetry time series and `qkdnet plot` on a real network (examples/two-nodes.yaml).

`qkdnet up` samples every node's /metrics into DIR/telemetry.csv while it runs; `run_sampler`
does the same into another file; `qkdnet plot` turns the samples into one PNG per link. The
series' reading and plotting are also checked on hand-made rows (DV and CV).
"""

from __future__ import annotations

import asyncio
import struct
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from orchestrator.plot import PlotError, link_series, plot_telemetry
from orchestrator.telemetry import CSV_FIELDS, read_rows, run_sampler
from test_orchestrator_helpers import UpNetwork, api, qkdnet_up, wait_for

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and data[12:16] == b"IHDR", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpNetwork]:
    up = qkdnet_up(ROOT / "examples" / "two-nodes.yaml", tmp_path_factory.mktemp("plot") / "net", timeout=90)
    try:
        yield up
    finally:
        up.stop()


def test_qkdnet_up_samples_every_node_into_telemetry_csv(two: UpNetwork) -> None:
    _, links = api(two.url("lab") + "/links")
    (link,) = [ln["qkdl_id"] for ln in links["phys"]]
    csv_path = two.state / "telemetry.csv"

    def enough() -> bool:
        if not csv_path.exists():
            return False
        rows = read_rows(csv_path)
        return all(sum(1 for r in rows if r["node"] == n and r["qkdl_id"] == link) >= 3 for n in ("alice", "bob"))

    wait_for(enough, 60, "three samples of the link from each node in telemetry.csv", interval=0.5)
    assert csv_path.read_text().splitlines()[0] == ",".join(CSV_FIELDS)
    rows = read_rows(csv_path)
    assert {r["qkdl_id"] for r in rows} == {link}
    for node in ("alice", "bob"):
        mine = [r for r in rows if r["node"] == node]
        ts = [float(r["timestamp"]) for r in mine]
        assert ts == sorted(ts) and len(set(ts)) == len(ts)
        for r in mine:
            assert float(r["skr_bps"]) > 0
            assert 0 < float(r["qber"]) < 0.11  # BB84: a QBER (fraction), no SNR
            assert r["snr_db"] == ""
            assert int(r["available_bits"]) >= 0


def test_run_sampler_writes_rows_until_stopped(two: UpNetwork, tmp_path: Path) -> None:
    out = tmp_path / "samples.csv"

    async def run() -> int:
        stop = asyncio.Event()
        task = asyncio.create_task(run_sampler(two.state / "network.json", out, 0.3, stop))
        while not out.exists() or len(read_rows(out)) < 6:
            await asyncio.sleep(0.1)
            assert not task.done(), task
        stop.set()
        return await asyncio.wait_for(task, 10)

    written = asyncio.run(run())
    rows = read_rows(out)
    assert written == len(rows) >= 6
    assert {r["node"] for r in rows} == {"alice", "bob"}
    assert all(float(r["skr_bps"]) > 0 for r in rows)


def test_qkdnet_plot_writes_one_png_per_link(two: UpNetwork, tmp_path: Path) -> None:
    wait_for(lambda: (two.state / "telemetry.csv").exists(), 30, "telemetry.csv")
    out = tmp_path / "plots"
    r = subprocess.run([sys.executable, "-m", "orchestrator.netctl", "plot", "--state-dir", str(two.state),
                        "--out", str(out)], capture_output=True, text=True, timeout=90)
    assert r.returncode == 0, r.stderr
    files = [Path(line) for line in r.stdout.split()]
    assert files and sorted(files) == sorted(out.glob("*.png"))
    _, links = api(two.url("lab") + "/links")
    assert len(files) == len(links["phys"]) == 1
    assert links["phys"][0]["qkdl_id"][:8] in files[0].name
    assert png_size(files[0]) == (800, 500)


def test_qkdnet_plot_without_telemetry_fails_cleanly(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "orchestrator.netctl", "plot", "--state-dir", str(tmp_path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "no telemetry file" in r.stderr
    (tmp_path / "telemetry.csv").write_text(",".join(CSV_FIELDS) + "\n")
    with pytest.raises(PlotError, match="no link samples"):
        plot_telemetry(tmp_path / "telemetry.csv", tmp_path / "plots")


def test_series_take_the_end_with_most_samples_and_plot_snr_for_cv(tmp_path: Path) -> None:
    head = ",".join(CSV_FIELDS)
    lines = [head]
    for i in range(4):  # DV link L1 seen by x (4 samples) and y (2); CV link L2 seen by y only
        lines.append(f"{100 + i},x,L1,{1000 + i},0.02,,{i}")
        if i < 2:
            lines.append(f"{100 + i},y,L1,{2000 + i},0.03,,{i}")
        lines.append(f"{100 + i},y,L2,{500 + i},,{-19.5 + i},{i}")
    path = tmp_path / "telemetry.csv"
    path.write_text("\n".join(lines) + "\n")
    series = {s.qkdl_id: s for s in link_series(read_rows(path))}
    assert series["L1"].node == "x" and series["L1"].ends == ["x", "y"] and not series["L1"].is_cv
    assert series["L1"].skr == [1000.0, 1001.0, 1002.0, 1003.0]
    assert series["L2"].is_cv and series["L2"].snr == [-19.5, -18.5, -17.5, -16.5]
    files = plot_telemetry(path, tmp_path / "out")
    assert sorted(f.name for f in files) == ["link-x-y-L1.png", "link-y-L2.png"]
    assert all(png_size(f) == (800, 500) for f in files)

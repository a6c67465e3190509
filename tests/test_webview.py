"""The orchestrator's live web page in a real browser: headless Chromium (Debian's `chromium`)
against `qkdnet up` of examples/chain-4.yaml (a - b - c - d, relay route a -> d).

Chromium runs the page's script (`--dump-dom` after 5 s of virtual time, i.e. after the page
refreshed from `/view` a few times) and the DOM it prints is parsed: every node of the domain is
drawn with its domain, every PHYS link carries the SKR `/links` reported at some moment of the
run, and the key route is listed with its path and reserved rate.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest
from lxml import html

from test_orchestrator_helpers import UpNetwork, api, qkdnet_up

pytestmark = pytest.mark.timeout(150)
SUITE_BUDGET_S = 120.0

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpNetwork]:
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (Debian package `chromium`; `make setup` installs it)")
    up = qkdnet_up(ROOT / "examples" / "chain-4.yaml", tmp_path_factory.mktemp("webview") / "net", timeout=90)
    try:
        yield up
    finally:
        up.stop()


class LinkSampler(threading.Thread):
    """Polls GET /links while the browser runs: every SKR value the API showed, per link."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.seen: dict[str, set[float]] = {}
        self.stop = threading.Event()

    def sample(self) -> None:
        _, links = api(self.url + "/links", timeout=10)
        for ln in links["phys"]:
            self.seen.setdefault(ln["qkdl_id"], set()).add(float(ln["skr_bps"]))

    def run(self) -> None:
        while not self.stop.is_set():
            self.sample()
            self.stop.wait(0.1)


def dump_dom(url: str, profile: Path) -> html.HtmlElement:
    assert CHROMIUM is not None
    r = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=5000",
                        "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return html.fromstring(r.stdout)


@pytest.fixture(scope="module")
def page(chain: UpNetwork, tmp_path_factory: pytest.TempPathFactory) -> tuple[html.HtmlElement, LinkSampler]:
    url = chain.url("lab")
    sampler = LinkSampler(url)
    sampler.sample()
    sampler.start()
    try:
        dom = dump_dom(url + "/", tmp_path_factory.mktemp("chromium-profile"))
    finally:
        sampler.stop.set()
        sampler.join(10)
    sampler.sample()
    return dom, sampler


def test_page_is_served_self_contained(chain: UpNetwork) -> None:
    with urllib.request.urlopen(chain.url("lab") + "/", timeout=10) as r:
        assert r.headers["Content-Type"].startswith("text/html")
        body = r.read().decode()
    assert "<svg" in body and "fetch(" in body
    assert "http://" not in body.replace("http://www.w3.org/2000/svg", "")  # no CDN, no external resource
    assert "https://" not in body and "<script src" not in body and "<link " not in body


def test_every_node_of_the_domain_is_drawn_with_its_domain(chain: UpNetwork, page: Any) -> None:
    dom, _ = page
    body = dom.find("body") if dom.tag != "body" else dom
    assert body.get("data-ready") == "1" and body.get("data-domain") == "lab"
    assert int(body.get("data-updates")) >= 2  # refreshed, not just drawn once
    drawn = {g.get("data-node"): g for g in dom.xpath("//*[@data-node]")}
    nodes = {n for n, info in chain.net["nodes"].items() if info["domain"] == "lab"}
    assert nodes == {"a", "b", "c", "d"} and set(drawn) == nodes
    for n in nodes:
        assert "lab" in drawn[n].get("data-domains").split()
        assert drawn[n].get("data-external") == "false" and drawn[n].get("data-reachable") == "true"
        assert n in drawn[n].text_content()


def test_links_show_the_skr_of_the_api(chain: UpNetwork, page: Any) -> None:
    dom, sampler = page
    _, links = api(chain.url("lab") + "/links")
    lines = {ln.get("data-link"): ln for ln in dom.xpath("//*[local-name()='line'][@data-link]")}
    assert set(lines) == {ln["qkdl_id"] for ln in links["phys"]} and len(lines) == 3
    for ln in links["phys"]:
        el = lines[ln["qkdl_id"]]
        assert {el.get("data-a"), el.get("data-b")} == {ln["a"], ln["b"]}
        assert el.get("data-up") == "true"
        skr = float(el.get("data-skr"))
        assert skr > 0
        assert skr in sampler.seen[ln["qkdl_id"]], (skr, sorted(sampler.seen[ln["qkdl_id"]]))
        assert el.get("stroke", "").startswith("hsl(")  # coloured by the rate
        title = el.xpath("./*[local-name()='title']")[0].text_content()
        assert ln["a"] in title and ln["b"] in title and "bit/s" in title
    rows = {tr.get("data-link"): tr for tr in dom.xpath("//tr[@data-link]")}
    assert set(rows) == set(lines)


def test_the_active_route_is_listed(chain: UpNetwork, page: Any) -> None:
    dom, _ = page
    _, routes = api(chain.url("lab") + "/routes")
    (route,) = routes["routes"]
    rows = dom.xpath("//tr[@data-route]")
    assert [tr.get("data-route") for tr in rows] == [route["id"]]
    tr = rows[0]
    assert (tr.get("data-src"), tr.get("data-dst"), tr.get("data-status")) == ("a", "d", "up")
    assert tr.get("data-path") == "a b c d"
    assert float(tr.get("data-reserved")) == sum(p["rate_bps"] for p in route["paths"]) == 50000
    assert dom.xpath(f"//*[local-name()='polyline'][@data-route-path='{route['id']}']")

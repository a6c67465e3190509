"""The MadQCI twin (topologies/madqci.yaml): its 45 direct links, the booted network, Table 1.

The 45 feasible direct links are counted twice, independently: by a brute force over the YAML here
(own Dijkstra over fibres and switches; budgets and wavelengths read from the device profiles, which
are data) and by the domains' orchestrators (`GET /direct-links` over their TAPI view of the booted
network); both must give the same pairings. The booted network is one module-scoped fixture
(`madqci`); further checks of the running twin (use cases, metrics) can reuse it.
"""

from __future__ import annotations

import heapq
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from qkdnode.devices.physics import link_performance
from qkdnode.devices.profiles import profile_by_name
from test_orchestrator_helpers import ROOT, UpNetwork, api, dec_keys, enc_keys, env_without_proxy, qkdnet_up, wait_for

TOPOLOGY = ROOT / "topologies" / "madqci.yaml"
SPEED_OF_LIGHT = 299_792_458.0
SUITE_BUDGET_S = 300  # one boot of the 9-node twin with two orchestrators and 13 direct links
DEFAULT_PROFILE = {"dv-bb84": "toshiba-bb84-t12", "dv-cow": "idq-cerberis3-cow", "cv-gg02": "hwdu-cv-gg02"}

Pair = tuple[str, str]


# -- brute force over the YAML ------------------------------------------------------------------------
def load_yaml(path: Path = TOPOLOGY) -> dict[str, Any]:
    return dict(yaml.safe_load(path.read_text()))


def dwdm_channel(wavelength_nm: float) -> int | None:
    """ITU-T G.694.1 100 GHz channel (f = 190 THz + n x 100 GHz) in the C/L band; None elsewhere."""
    if not 1500.0 <= wavelength_nm <= 1625.0:
        return None
    return round((SPEED_OF_LIGHT / (wavelength_nm * 1e-9) / 1e12 - 190.0) / 0.1)


def profile_of(module: dict[str, Any]) -> Any:
    return profile_by_name(module.get("profile") or DEFAULT_PROFILE[module["technology"]])


def lowest_loss(topo: dict[str, Any], tx: dict[str, Any], rx: dict[str, Any]) -> float | None:
    """Lowest loss from tx to rx: a switch is crossed at its insertion loss (also the modules' own
    switch), a fibre at its loss, and light stops at a node without a switch (a module there sits on
    the end of its `fibre`). States: ("at", node) = inside node's switch, ("end", fibre, node)."""
    il = {s["node"]: float(s.get("insertion_loss_db", 1.0)) for s in topo.get("switches", [])}
    fibres = {f["name"]: f for f in topo["fibres"]}

    def loss_of(f: dict[str, Any]) -> float:
        if "loss_db" in f:
            return float(f["loss_db"])
        return float(f["length_km"]) * {"C": 0.2, "O": 0.33}[f.get("band", "C")]

    def far(f: dict[str, Any], node: str) -> str:
        a, b = f["ends"]
        return b if a == node else a

    heap: list[tuple[float, tuple[str, ...]]] = []
    if tx["node"] in il:
        heap.append((il[tx["node"]], ("at", tx["node"])))
    elif "fibre" in tx:
        f = fibres[tx["fibre"]]
        heap.append((loss_of(f), ("end", f["name"], far(f, tx["node"]))))
    done: set[tuple[str, ...]] = set()
    while heap:
        cost, state = heapq.heappop(heap)
        if state in done:
            continue
        done.add(state)
        if state[0] == "end":
            _, fname, node = state
            if node in il:
                heapq.heappush(heap, (cost + il[node], ("at", node)))
            elif rx["node"] == node and rx.get("fibre") == fname:
                return cost
            continue
        node = state[1]
        if rx["node"] == node and node in il:
            return cost
        for f in fibres.values():
            if node in f["ends"]:
                heapq.heappush(heap, (cost + loss_of(f), ("end", f["name"], far(f, node))))
    return None


def brute_force(topo: dict[str, Any]) -> dict[Pair, float]:
    """Every (emitter, receiver) module pairing on different nodes, same technology and DWDM channel
    (or both off the grid), whose lowest-loss light path fits min(budget of the two profiles)."""
    out: dict[Pair, float] = {}
    mods = topo["modules"]
    for tx in (m for m in mods if m["role"] == "transmitter"):
        ptx = profile_of(tx)
        for rx in (m for m in mods if m["role"] == "receiver"):
            prx = profile_of(rx)
            if rx["node"] == tx["node"] or rx["technology"] != tx["technology"]:
                continue
            if dwdm_channel(ptx.wavelength_nm) != dwdm_channel(prx.wavelength_nm):
                continue
            loss = lowest_loss(topo, tx, rx)
            if loss is not None and loss <= min(ptx.loss_budget_db, prx.loss_budget_db) + 1e-9:
                out[(tx["name"], rx["name"])] = round(loss, 3)
    return out


def vendor(topo: dict[str, Any], module: str) -> str:
    m = next(m for m in topo["modules"] if m["name"] == module)
    return str(profile_of(m).vendor)


# -- the file alone -----------------------------------------------------------------------------------
def test_brute_force_counts_the_papers_45_direct_links() -> None:
    topo = load_yaml()
    pairs = brute_force(topo)
    by_vendor = Counter(vendor(topo, tx) for tx, _ in pairs)
    # MadQCI: "a total of 45 compatible direct connections"; HWDU: "36 different QKD links"
    assert len(pairs) == 45, sorted(pairs)
    assert by_vendor["Huawei Technologies Duesseldorf"] == 36
    # the fixed pairs stay fixed: every ID Quantique / Toshiba / AIT module in exactly one pairing
    assert by_vendor["ID Quantique"] == 4 and by_vendor["Toshiba"] == 4 and by_vendor["AIT"] == 1
    fixed = [m for m in topo["modules"] if profile_of(m).vendor in ("ID Quantique", "Toshiba", "AIT")]
    for m in fixed:
        assert sum(m["name"] in p for p in pairs) == 1, m["name"]
    # every declared direct link (what MadQCI operated) is one of them
    for d in topo["direct_links"]:
        assert (d["emitter"], d["receiver"]) in pairs


def test_brute_force_on_a_small_plant() -> None:
    """The counter itself: switch crossings, a switchless end, the budget and the channel rules."""
    topo = {
        "switches": [{"node": "a", "insertion_loss_db": 1.0}, {"node": "b", "insertion_loss_db": 0.5}],
        "fibres": [{"name": "ab", "ends": ["a", "b"], "loss_db": 4.0},
                   {"name": "bc", "ends": ["b", "c"], "loss_db": 6.0},
                   {"name": "cd", "ends": ["c", "d"], "loss_db": 1.0}],
        "modules": [
            {"name": "t", "technology": "cv-gg02", "profile": "ait-cv-qpsk", "role": "transmitter", "node": "a"},
            {"name": "rb", "technology": "cv-gg02", "profile": "ait-cv-qpsk", "role": "receiver", "node": "b"},
            {"name": "rc", "technology": "cv-gg02", "profile": "ait-cv-qpsk", "role": "receiver", "node": "c",
             "fibre": "bc"},
            {"name": "rd", "technology": "cv-gg02", "profile": "ait-cv-qpsk", "role": "receiver", "node": "d",
             "fibre": "cd"},  # behind switchless c: unreachable
            {"name": "r38", "technology": "cv-gg02", "profile": "hwdu-cv-gg02-c38", "role": "receiver",
             "node": "b"},  # another channel
        ],
    }
    assert brute_force(topo) == {("t", "rb"): 5.5, ("t", "rc"): 11.5}  # 1 + 4 + 0.5; 1 + 4 + 0.5 + 6
    topo["fibres"][1]["loss_db"] = 6.6  # 12.1 dB > the 12 dB budget of ait-cv-qpsk
    assert set(brute_force(topo)) == {("t", "rb")}


def test_the_twin_is_a_valid_topology_of_9_sites_in_2_domains() -> None:
    from orchestrator.topology import load_topology

    topo = load_topology(TOPOLOGY)
    assert len(topo.nodes) == 9 and topo.domains() == ["redimadrid", "telefonica"]
    assert {n for n, s in topo.nodes.items() if s.border} == {"quevedo", "norte"}
    [border] = [f for f in topo.fibres.values() if set(f.ends) == {"quevedo", "norte"}]
    assert border.name == "L4"
    lengths = [f.length_km for f in topo.fibres.values()]
    losses = [f.loss_db for f in topo.fibres.values()]
    assert (min(lengths), max(lengths), min(losses), max(losses)) == (1.9, 33.1, 2.0, 14.3)  # the paper's ranges
    assert topo.fibres["L8"].length_km == 33.1 and topo.fibres["L8"].loss_db == 11.8
    assert topo.qrng_node is not None and topo.nodes[topo.qrng_node].domain == "telefonica"
    uc = {u["name"]: u for u in topo.extra["use_cases"]}
    a, b = uc["uc1-encryptors"]["saes"]
    assert topo.nodes[topo.saes[a].node].domain != topo.nodes[topo.saes[b].node].domain
    # every pair of SAEs that shares keys has a declared route
    pairs = [tuple(uc["uc1-encryptors"]["saes"]), tuple(uc["uc2-hybrid"]["saes"])]
    chain = uc["uc3-opot"]["saes"]
    pairs += list(zip(chain, chain[1:]))
    pairs += [(uc["uc4-cloud"]["server"], c) for c in uc["uc4-cloud"]["clients"]]
    for x, y in pairs:
        assert any({x, y} <= set(r.saes) and {topo.saes[x].node, topo.saes[y].node} == {r.path[0], r.path[-1]}
                   for r in topo.routes.values()), (x, y)


# -- Table 1 ------------------------------------------------------------------------------------------
def test_compare_table1_rows_come_from_the_physics_model() -> None:
    from orchestrator.table1 import TABLE1, compare
    from orchestrator.topology import load_topology

    rows = compare(load_topology(TOPOLOGY))
    assert [c.row for c in rows] == list(TABLE1)
    in_twin = [c for c in rows if c.row.emitter is not None and c.row.receiver is not None]
    assert all(c.simulated_kbps is None for c in rows if c not in in_twin)
    assert len(in_twin) >= 30 and {c.row.vendor for c in in_twin} == {"HWDU", "ID Quantique", "Toshiba", "AIT"}
    yaml_topo = load_yaml()
    for c in in_twin:
        assert c.profile is not None and c.loss_db is not None and c.simulated_kbps is not None
        # the loss is the lowest-loss light path (the brute force's own path search agrees)
        tx = next(m for m in yaml_topo["modules"] if m["name"] == c.row.emitter)
        rx = next(m for m in yaml_topo["modules"] if m["name"] == c.row.receiver)
        assert c.loss_db == pytest.approx(lowest_loss(yaml_topo, tx, rx))
        expected = link_performance(profile_by_name(c.profile), c.loss_db).skr_bps / 1000
        assert c.simulated_kbps == pytest.approx(expected)
        if c.simulated_kbps > 0:
            assert c.ratio == pytest.approx(c.simulated_kbps / c.row.measured_kbps)
    # the direct links of link 8: 33.1 km, 11.8 dB of fibre + two switch crossings
    [l8] = [c for c in rows if c.row.link == "8"]
    assert l8.path == ("L8",) and l8.loss_db == pytest.approx(13.8) and l8.length_km == pytest.approx(33.1)


def test_qkdnet_compare_table1_prints_the_comparison() -> None:
    out = subprocess.run([sys.executable, "-m", "orchestrator.netctl", "compare-table1"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split()[:3] == ["link", "(Table", "1)"] and "sim/meas" in lines[0]
    rows = [ln for ln in lines[2:] if ln and ln[0].isdigit() or ln.startswith("remote")]
    from orchestrator.table1 import TABLE1

    assert len(rows) == len(TABLE1)
    assert sum(ln.startswith("8 ") and "37.20" in ln for ln in rows) == 1
    assert any(ln.startswith("Toshiba: geometric mean") for ln in lines)
    bad = subprocess.run([sys.executable, "-m", "orchestrator.netctl", "compare-table1", "--topology",
                          str(ROOT / "examples" / "two-nodes.yaml")], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "no module named" in bad.stderr


# -- the booted twin ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def madqci(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpNetwork]:
    up = qkdnet_up(TOPOLOGY, tmp_path_factory.mktemp("madqci") / "net", timeout=280)
    try:
        yield up
    finally:
        up.stop()
        reap(up.state)


def reap(state: Path) -> None:
    """End what `qkdnet up` left running of this network (its state dir is in their command lines):
    a launcher killed after its stop timeout leaves its node, plant and QRNG processes behind."""
    import os
    import signal
    import time

    def ours() -> list[int]:
        pids = []
        for d in Path("/proc").iterdir():
            try:
                if d.name.isdigit() and str(state) in (d / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(d.name))
            except OSError:
                continue
        return pids

    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in ours():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 15
        while ours() and time.monotonic() < deadline:
            time.sleep(0.2)


@pytest.mark.timeout(420)
def test_booted_twin_has_9_sites_2_domains_and_the_border_link(madqci: UpNetwork) -> None:
    net = madqci.net
    assert len(net["nodes"]) == 9 and set(net["orchestrators"]) == {"redimadrid", "telefonica"}
    assert set(net["nodes"]["quevedo"]["domains"]) == set(net["nodes"]["norte"]["domains"]) == {"redimadrid", "telefonica"}
    ids = {i["node_id"]: n for n, i in net["nodes"].items()}
    assert set(ids.values()) == set(net["nodes"])
    # the border link 4 carries one DV (ID Quantique) and one CV (HWDU) system at once, both built
    # through ofs-quevedo and ofs-norte on fibre L4's line ports (WDM: C-32 and C-37), both keyed
    declared = {(d["emitter"], d["receiver"]): d["qkdl_id"] for d in net["direct_links"]}
    dv, cv = declared[("idq-l4-tx", "idq-l4-rx")], declared[("hw-tx-norte-c37", "hw-rx-quevedo-c37")]
    for domain in ("redimadrid", "telefonica"):
        def border_up(d: str = domain) -> dict[str, Any] | None:
            st, links = api(f"{madqci.url(d)}/links")
            border = {p["qkdl_id"]: p for p in links["phys"] if {p["a"], p["b"]} == {"quevedo", "norte"}}
            ok = st == 200 and {dv, cv} <= set(border) and all(p["up"] and p["skr_bps"] > 0 for p in border.values())
            return border if ok else None

        border = wait_for(border_up, 90, f"the border link's DV and CV PHYS links up in {domain}", interval=1.0)
        assert set(border) == {dv, cv}, border
        assert str(border[dv]["technology"]).startswith("DV-QKD") and border[cv]["technology"] == "CV-QKD", border
    st, body = api(f"{madqci.url('telefonica')}/direct-links")
    built = {b["qkdl_id"]: b for b in body["built"]}
    xc = {q: {x["switch"]: x for x in built[q]["cross_connects"]} for q in (dv, cv)}
    assert set(xc[dv]) == set(xc[cv]) == {"ofs-quevedo", "ofs-norte"}

    def l4_port(node: str) -> int:
        plan = yaml.safe_load((madqci.state / "nodes" / f"{node}.yaml").read_text())["switch"]["port_plan"]
        return int(next(e["port"] for e in plan if e.get("fibre") == "L4"))

    # DV Quevedo->Norte, CV Norte->Quevedo: the same line port of each switch, fibre L4's
    assert xc[dv]["ofs-quevedo"]["out_port"] == xc[cv]["ofs-quevedo"]["in_port"] == l4_port("quevedo")
    assert xc[dv]["ofs-norte"]["in_port"] == xc[cv]["ofs-norte"]["out_port"] == l4_port("norte")
    assert (built[dv]["wavelength"], built[cv]["wavelength"]) == ("32", "37")


@pytest.mark.timeout(420)
def test_restarted_orchestrators_rebuild_each_route_in_its_own_domain(madqci: UpNetwork) -> None:
    """Both domains' orchestrators started afresh on the running twin (as `qkdnet up` does on a state
    dir it ran before) rebuild every declared route from the nodes, each in the domain it was asked
    of; route uc3-3 lies only on the two border nodes (quevedo -> norte): only quevedo's own domain
    (redimadrid) has it, asks for it again get the same route, and telefonica refuses to make it."""
    import asyncio

    from orchestrator.controller import Orchestrator, RequestError
    from orchestrator.inventory import from_network_json

    net = madqci.net
    topo = load_yaml()
    home = {n["name"]: n["domain"] for n in topo["nodes"]}
    wanted = {d: {net["routes"][r["name"]]["qkdl_id"] for r in topo["routes"] if home[r["path"][0]] == d}
              for d in ("redimadrid", "telefonica")}
    uc3_3 = net["routes"]["uc3-3"]["qkdl_id"]
    assert uc3_3 in wanted["redimadrid"]

    async def fresh(domain: str) -> set[str]:
        orch = Orchestrator(from_network_json(net, domain), poll_interval=0, notifications=False)
        try:
            await orch.start()
            origin = {rid for rid, r in orch.routes.items() if r.origin}
            if domain == "redimadrid":
                r = orch.routes[uc3_3]
                again = await orch.provision_route("quevedo", "norte", r.min_rate, list(r.saes), route_id=uc3_3)
                assert again is r
            else:
                with pytest.raises(RequestError, match="domain redimadrid") as refused:
                    await orch.provision_route("quevedo", "norte", 512, ["opot-3", "opot-4"])
                assert refused.value.status == 409
            return origin
        finally:
            await orch.stop()

    for domain in ("redimadrid", "telefonica"):
        assert asyncio.run(fresh(domain)) == wanted[domain], domain


@pytest.mark.timeout(420)
def test_orchestrators_enumerate_the_same_45_direct_links(madqci: UpNetwork) -> None:
    seen: dict[Pair, float] = {}
    for domain in ("redimadrid", "telefonica"):
        st, body = api(f"{madqci.url(domain)}/direct-links")
        assert st == 200, body
        for d in body["direct_links"]:
            seen[(d["emitter"]["device"], d["receiver"]["device"])] = float(d["loss_db"])
    expected = brute_force(load_yaml())
    assert set(seen) == set(expected), (sorted(set(seen) - set(expected)), sorted(set(expected) - set(seen)))
    assert len(seen) == 45
    for pair, loss in expected.items():
        assert seen[pair] == pytest.approx(loss, abs=1e-3), pair


@pytest.mark.timeout(420)
def test_every_declared_route_carries_keys_between_its_saes(madqci: UpNetwork) -> None:
    """ETSI 014 across each route of the use cases (uc1 crosses the border link 4)."""
    net = madqci.net
    # the routes' SAEs are the use cases': `qkdnet up` runs those first, and they compare the nodes'
    # per-SAE counters with their own, so this test's requests wait until they are done
    wait_for(lambda: len(list((madqci.state / "usecases").glob("*.json"))) == 4, 150, "the use cases' results",
             interval=1.0)
    topo = load_yaml()
    sae_node = {s["id"]: s["node"] for s in topo["saes"]}
    for route in topo["routes"]:
        a = next(s for s in route["saes"] if sae_node[s] == route["path"][0])
        b = next(s for s in route["saes"] if sae_node[s] == route["path"][-1])

        def fetched() -> Any:
            st, body = enc_keys(net, sae_node[a], a, b, n=1)
            return body if st == 200 else None

        body = wait_for(fetched, 60, f"a key over route {route['name']}", interval=1.0)
        st, got = dec_keys(net, sae_node[b], b, a, [k["key_ID"] for k in body["keys"]])
        assert st == 200 and got["keys"] == body["keys"], route["name"]


@pytest.mark.timeout(420)
def test_qkdnet_up_serves_every_use_case_end_to_end(madqci: UpNetwork) -> None:
    """`qkdnet up` runs the twin's use cases once after the routes are installed (30 s of traffic):
    each writes DIR/usecases/NAME.json; every one must be served, with its Table 2 metric measured
    and equal to the nodes' Prometheus counts for its window."""
    import json

    names = [u["name"] for u in load_yaml()["use_cases"]]
    assert names == ["uc1-encryptors", "uc2-hybrid", "uc3-opot", "uc4-cloud"]
    paths = {n: madqci.state / "usecases" / f"{n}.json" for n in names}
    wait_for(lambda: all(p.exists() for p in paths.values()), 150, "the use cases' results", interval=1.0)
    for name, path in paths.items():
        r = json.loads(path.read_text())
        assert r["served"], (name, r["reason"])
        assert r["mismatches"] == [] and r["prometheus"] == r["client"] and r["prometheus"], name
        assert r["metrics"] and all(m["value"] > 0 for k, m in r["metrics"].items()
                                    if k in ("throughput", "rekeys", "requests_per_s", "keys_per_s")), (name, r["metrics"])


@pytest.mark.timeout(420)
def test_every_node_and_orchestrator_exports_metrics(madqci: UpNetwork) -> None:
    import urllib.request

    def scrape(url: str) -> str:
        with urllib.request.urlopen(url, timeout=10) as r:
            assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
            return r.read().decode()

    for name, node in madqci.net["nodes"].items():
        text = scrape(node["metrics_url"])
        for metric in ("qkd_link_skr_bps", "qkd_keystore_available_bits", "qkd_netconf_sessions"):
            assert f'{metric}{{' in text and f'node="{name}"' in text, (name, metric)
        skr = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("qkd_link_skr_bps{")]
        assert skr and max(skr) > 0, name
    for domain in madqci.net["orchestrators"]:
        text = scrape(f"{madqci.url(domain)}/metrics")
        assert "qkd_orch_routes{" in text and f'domain="{domain}"' in text


@pytest.mark.timeout(420)
def test_qkdnet_status_prints_links_routes_and_use_cases(madqci: UpNetwork) -> None:
    import subprocess
    import sys

    wait_for(lambda: len(list((madqci.state / "usecases").glob("*.json"))) == 4, 150, "the use cases' results",
             interval=1.0)
    out = subprocess.run([sys.executable, "-m", "orchestrator.netctl", "status", "--state-dir", str(madqci.state)],
                         capture_output=True, text=True, timeout=120, env={**env_without_proxy(), "COLUMNS": "250"})
    assert out.returncode == 0, out.stderr
    text = out.stdout
    for title in ("QKD links", "key routes", "use cases"):
        assert title in text, text
    assert "norte - quevedo" in text or "quevedo - norte" in text
    for name in ("uc1-encryptors", "uc2-hybrid", "uc3-opot", "uc4-cloud"):
        line = next(ln for ln in text.splitlines() if name in ln)
        assert "yes" in line, line
    assert "[redimadrid]" in text and "[telefonica]" in text  # uc1's route: one segment per domain

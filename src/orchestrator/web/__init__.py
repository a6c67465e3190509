"""The orchestrator's live web page (`GET /`) and the JSON it draws (`GET /view`).

The page (`index.html`, package data) is self-contained: inline JavaScript and SVG, no external
resources. It fetches `/view` every 2 s and draws this domain's sites grouped by domain (a border
node shows every domain it belongs to), the PHYS links coloured by their live secret key rate, and
the active key routes with their paths and reserved rate. Nodes of other domains appear only as
the far ends of this domain's links (the controller sees no further; README "Telemetry").
"""

from __future__ import annotations

import time
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..controller import Orchestrator

PAGE = "index.html"


@cache
def index_html() -> bytes:
    return resources.files(__package__).joinpath(PAGE).read_bytes()


def view_json(orch: Orchestrator) -> dict[str, Any]:
    """Sites (with their domains), PHYS links (live SKR) and key routes, in one document."""
    topo = orch.topology_json()
    links = orch.links_json()
    names = orch.names()
    sites = [{"name": n["name"], "qkdn_id": n["qkdn_id"], "location": n["location"],
              "domains": n["domains"] or [orch.domain], "border": n["border"], "reachable": n["reachable"],
              "status": n["status"]} for n in topo["nodes"]]
    phys = [{"qkdl_id": ln["qkdl_id"], "a": ln["a"], "b": ln["b"], "up": ln["up"], "skr_bps": ln["skr_bps"],
             "qber_percent": ln["qber_percent"]} for ln in links["phys"]]
    routes = []
    for r in sorted(orch.routes.values(), key=lambda r: r.route_id):
        doc = r.to_json(names)
        routes.append({"id": doc["id"], "src": doc["src"], "dst": doc["dst"], "status": doc["status"],
                       "saes": doc["saes"], "rate_bps": doc["rate_bps"], "peer_domain": doc["peer_domain"],
                       "reserved_bps": 0 if r.status == "down" else sum(s.rate for s in r.segments),
                       "paths": [{"qkdl_id": p["qkdl_id"], "nodes": p["nodes"], "rate_bps": p["rate_bps"]}
                                 for p in doc["paths"]]})
    return {"domain": orch.domain, "time": time.time(), "ready": orch.ready.is_set(), "sites": sites,
            "links": phys, "routes": routes, "peers": sorted(orch.peers.urls)}

"""Topology files: the examples load, and mistakes are reported with file, line and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.topology import TopologyError, load_topology, parse_topology

ROOT = Path(__file__).resolve().parents[1]

GOOD = """\
name: t
nodes:
  - name: a
    domain: d1
  - name: b
    domain: d2
    border: [d1]
fibres:
  - name: ab
    ends: [a, b]
    length_km: 10
    band: O
modules:
  - {name: a1, technology: cv-gg02, role: transmitter, node: a, pairs_with: b1}
  - {name: b1, technology: cv-gg02, role: receiver, node: b, pairs_with: a1}
saes:
  - {id: sae-a, node: a}
"""


def test_examples_load() -> None:
    for path in sorted((ROOT / "examples").glob("*.yaml")):
        if path.name == "node.yaml":
            continue
        topo = load_topology(path)
        assert topo.nodes, path


def test_good_topology_parses_with_defaults() -> None:
    topo = parse_topology(GOOD, "t.yaml")
    assert list(topo.nodes) == ["a", "b"]
    assert topo.fibres["ab"].loss_db == pytest.approx(3.3)  # 10 km x 0.33 dB/km (O band)
    assert topo.modules["a1"].pairs_with == "b1"
    assert topo.domains() == ["d1", "d2"]
    assert topo.saes["sae-a"].node == "a"


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("    length_km: 10", "    lenght_km: 10", "t.yaml:11: fibres[0].lenght_km: unknown field 'lenght_km' (did you mean 'length_km'?)"),
        ("ends: [a, b]", "ends: [a, c]", "t.yaml:10: fibres[0].ends[1]: no node named 'c'"),
        ("    band: O", "    band: X", "t.yaml:12: fibres[0].band: 'X' is not one of C, O"),
        ("node: b, pairs_with: a1", "node: a, pairs_with: a1", "t.yaml:14: modules[0].pairs_with: b1 and a1 are on the same node"),
        ("technology: cv-gg02, role: receiver", "technology: dv-cow, role: receiver",
         "t.yaml:14: modules[0].pairs_with: b1 is dv-cow, a1 is cv-gg02"),
        ("  - name: b\n", "  - name: a\n", "t.yaml:5: nodes[1].name: duplicate node name 'a'"),
        ("    length_km: 10", "    length_km: -1", "t.yaml:11: fibres[0].length_km: expected a number >= 0.0, got -1"),
        ("saes:", "sae:", "t.yaml:16: sae: unknown field 'sae' (did you mean 'saes'?)"),
    ],
)
def test_errors_name_file_line_and_field(old: str, new: str, expected: str) -> None:
    text = GOOD.replace(old, new, 1)
    assert text != GOOD
    with pytest.raises(TopologyError) as info:
        parse_topology(text, "t.yaml")
    assert str(info.value) == expected


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(TopologyError, match="No such file"):
        load_topology(tmp_path / "nope.yaml")

"""Dashboards as code: the committed JSON is exactly what grafana/dashboards.py generates,
and every panel's PromQL parses (promtool, via a throwaway rules file)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.debtools import unpacked

GRAFANA = Path(__file__).resolve().parents[2] / "grafana"


def load_source():
    spec = importlib.util.spec_from_file_location("dashboards", GRAFANA / "dashboards.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def committed() -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in sorted((GRAFANA / "dashboards").glob("*.json"))}


def panel_queries(board: dict) -> list[tuple[str, str]]:
    """(panel title, expr) of every query of every panel, as Grafana reads them."""
    return [(panel["title"], target["expr"]) for panel in board["panels"] for target in panel.get("targets", [])]


def test_the_committed_json_is_what_the_source_generates():
    generated = load_source().render()
    on_disk = {p.name: p.read_text() for p in (GRAFANA / "dashboards").glob("*.json")}
    assert set(on_disk) == set(generated), "run: python grafana/dashboards.py"
    for name, text in generated.items():
        assert on_disk[name] == text, f"grafana/dashboards/{name} drifted from grafana/dashboards.py"


def test_the_drift_check_notices_a_hand_edit(tmp_path, monkeypatch):
    source = load_source()
    copy = tmp_path / "dashboards"
    copy.mkdir()
    for name, text in source.render().items():
        (copy / name).write_text(text.replace("Open WebSockets", "Open sockets (edited by hand)"))
    monkeypatch.setattr(source, "OUT", copy)
    monkeypatch.setattr("sys.argv", ["dashboards.py", "--check"])
    assert source.main() == 1


def test_the_dashboards_cover_what_sres_watch():
    titles = {board["title"] for board in committed().values()}
    assert titles == {"Channels overview", "HTTP pool", "Redis & Sentinel", "nginx", "PostgreSQL", "Hosts"}
    for name, board in committed().items():
        assert board["uid"] == name.removesuffix(".json")
        for panel in board["panels"]:
            assert panel["datasource"] == {"type": "prometheus", "uid": "prometheus"}, panel["title"]
            assert panel["targets"], panel["title"]


def test_every_panel_query_parses(tmp_path):
    promtool = unpacked("prometheus", "prometheus-alertmanager") / "usr/bin/promtool"
    rules = [
        {"record": f"dashboard:query_{i}", "expr": expr.replace("$__rate_interval", "1m")}
        for i, (_, expr) in enumerate(q for board in committed().values() for q in panel_queries(board))
    ]
    path = tmp_path / "queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = subprocess.run([str(promtool), "check", "rules", str(path)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", sorted(committed()))
def test_panels_do_not_overlap(name):
    cells = set()
    for panel in committed()[name]["panels"]:
        pos = panel["gridPos"]
        mine = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not cells & mine, panel["title"]
        assert pos["x"] + pos["w"] <= 24
        cells |= mine

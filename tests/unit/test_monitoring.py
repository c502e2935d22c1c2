"""Alert rules and monitoring configs pass Prometheus's own tools (Debian's, unpacked, never run as services)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.debtools import unpacked

RULES = Path(__file__).resolve().parents[2] / "grafana" / "prometheus"


@pytest.fixture(scope="session")
def tools() -> Path:
    return unpacked("prometheus", "prometheus-alertmanager") / "usr/bin"


def run(*argv, cwd=None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, check=False, timeout=120, cwd=cwd)


def alerts() -> list[dict]:
    return [rule for group in yaml.safe_load((RULES / "alerts.yml").read_text())["groups"] for rule in group["rules"]]


def test_promtool_checks_the_rules(tools):
    result = run(tools / "promtool", "check", "rules", RULES / "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_passes_its_unit_tests(tools):
    result = run(tools / "promtool", "test", "rules", "alerts_test.yml", cwd=RULES)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_unit_tests_catch_a_wrong_threshold(tools, tmp_path):
    for name in ("alerts.yml", "alerts_test.yml"):
        (tmp_path / name).write_text((RULES / name).read_text())
    rules = tmp_path / "alerts.yml"
    rules.write_text(rules.read_text().replace("> 0.05", "> 0.5"))
    result = run(tools / "promtool", "test", "rules", "alerts_test.yml", cwd=tmp_path)
    assert result.returncode != 0
    assert "HTTP5xxRatioHigh" in result.stdout + result.stderr


@pytest.mark.parametrize("rule", alerts(), ids=lambda rule: rule["alert"])
def test_every_alert_says_how_bad_and_what_to_check_first(rule):
    assert rule["labels"]["severity"] in {"critical", "warning", "info"}
    assert rule["annotations"]["summary"]
    assert "Check first" in rule["annotations"]["description"]


RUNBOOKS = RULES.parents[1] / "docs" / "runbooks.md"


def runbook_sections() -> dict[str, str]:
    """Anchor (as a Markdown renderer makes it from a one-word heading) -> the section's text."""
    parts = re.split(r"^## (\S+)\n", RUNBOOKS.read_text(), flags=re.M)
    return {heading.lower(): body for heading, body in zip(parts[1::2], parts[2::2], strict=True)}


@pytest.mark.parametrize("rule", alerts(), ids=lambda rule: rule["alert"])
def test_every_alert_links_its_runbook_and_the_runbook_answers(rule):
    path, _, anchor = rule["annotations"]["runbook_url"].partition("#")
    assert path == "docs/runbooks.md"
    assert anchor == rule["alert"].lower()
    section = runbook_sections()[anchor]
    for part in ("**What users see.**", "**Check first.**", "**Mitigate.**"):
        assert part in section, f"{rule['alert']}: {part}"


def test_every_runbook_belongs_to_an_alert():
    assert set(runbook_sections()) == {rule["alert"].lower() for rule in alerts()}


def test_the_role_puts_the_prefix_before_each_runbook(rendered):
    installed = [r for g in yaml.safe_load((rendered / "rules.yml").read_text())["groups"] for r in g["rules"]]
    assert {r["annotations"]["runbook_url"] for r in installed} == {
        f"https://git.example.org/ops/channels/-/blob/main/docs/runbooks.md#{r['alert'].lower()}" for r in alerts()
    }


def test_every_alert_is_tested_firing_and_silent():
    cases = [
        case
        for test in yaml.safe_load((RULES / "alerts_test.yml").read_text())["tests"]
        for case in test["alert_rule_test"]
    ]
    for rule in alerts():
        mine = [case for case in cases if case["alertname"] == rule["alert"]]
        assert any(case["exp_alerts"] for case in mine), f"{rule['alert']} is never shown firing"
        assert any(not case["exp_alerts"] for case in mine), f"{rule['alert']} is never shown silent"


def test_the_role_installs_the_rules_with_the_inventory_for_overrides(tools, rendered):
    installed = {
        rule["alert"]: rule
        for group in yaml.safe_load((rendered / "rules.yml").read_text())["groups"]
        for rule in group["rules"]
    }
    assert set(installed) == {rule["alert"] for rule in alerts()}
    assert installed["DaphneInstanceDown"]["for"] == "10s"
    assert installed["HostDown"]["for"] == "2m"
    result = run(tools / "promtool", "check", "rules", rendered / "rules.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_checks_the_rendered_prometheus_config(tools, rendered):
    result = run(tools / "promtool", "check", "config", rendered / "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load((rendered / "prometheus.yml").read_text())
    daphne = next(job for job in config["scrape_configs"] if job["job_name"] == "daphne")
    assert [target["labels"]["host"] for target in daphne["static_configs"]] == ["ws1", "ws1"]


def test_amtool_checks_the_rendered_alertmanager_config(tools, rendered):
    result = run(tools / "amtool", "check-config", rendered / "alertmanager.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load((rendered / "alertmanager.yml").read_text())
    receivers = {receiver["name"]: receiver for receiver in config["receivers"]}
    assert [hook["url"] for hook in receivers["critical"]["webhook_configs"]] == [
        "https://hooks.example.org/alert",
        "https://chat.example.org/hook",
    ]
    assert [mail["to"] for mail in receivers["info"]["email_configs"]] == ["ops@example.org"]
    assert "webhook_configs" not in receivers["info"]
    host_down = config["inhibit_rules"][0]
    assert host_down["equal"] == ["host"]

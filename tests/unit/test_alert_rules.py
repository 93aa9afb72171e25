"""The alert rules pass `promtool check rules`, every alert has a rule unit test
(`deploy/prometheus-rules.test.yaml`, run by `promtool test rules`) in which it
fires, and every rule names only metrics the daemon defines."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml
from prometheus_client import generate_latest

import poller.observability.metrics  # noqa: F401  (defines every metric)
from tests.support.prometheus import exported_names, promql_metric_names, require_binary

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
RULES = DEPLOY / "prometheus-rules.yaml"
RULE_TESTS = DEPLOY / "prometheus-rules.test.yaml"


def _rules() -> list[dict[str, str]]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_binary("promtool"), *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_promtool_check_rules() -> None:
    done = promtool("check", "rules", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_rule_unit_tests_pass() -> None:
    done = promtool("test", "rules", str(RULE_TESTS))
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_has_a_unit_test_in_which_it_fires() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    fired = {
        case["alertname"]
        for test in tests
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    alerts = {rule["alert"] for rule in _rules() if "alert" in rule}
    assert alerts, "no alerts in the rules file"
    assert alerts <= fired, f"alerts with no unit test in which they fire: {sorted(alerts - fired)}"


def test_rules_name_only_metrics_the_daemon_defines() -> None:
    defined = exported_names(generate_latest().decode())
    for rule in _rules():
        names = promql_metric_names(rule["expr"])
        assert names, rule
        assert names <= defined, f"{rule.get('alert')}: unknown {sorted(names - defined)}"

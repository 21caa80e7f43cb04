"""Operator settings from the environment: every bad value is named, none is a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from eva_operator.config import OperatorConfig


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("EVA_WEBHOOK_FAILURE_POLICY", "Sometimes", "one of Ignore, Fail"),
        ("EVA_WEBHOOK_URL", "http://127.0.0.1:9443", "must be an https:// URL"),
        ("EVA_WEBHOOK_TIMEOUT_SECONDS", "60", "must be in 1..30"),
        ("EVA_OPERATOR_METRICS_PORT", "99999", "must be in 0..65535"),
        ("EVA_OPERATOR_HEALTH_PORT", "eighty", "not an integer"),
        ("EVA_WEBHOOK_PORT", "0", "must be in 1..65535"),
        ("EVA_OPERATOR_RESYNC_SECONDS", "-1", "must be positive"),
        ("EVA_OPERATOR_RESYNC_SECONDS", "soon", "not a number"),
    ],
)
def test_a_bad_setting_is_named(monkeypatch, name: str, value: str, message: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=name) as err:
        OperatorConfig.from_env()
    assert message in str(err.value)


def test_good_settings_are_read(monkeypatch) -> None:
    monkeypatch.setenv("EVA_WEBHOOK_FAILURE_POLICY", "fail")
    monkeypatch.setenv("EVA_WEBHOOK_URL", "https://10.1.2.3:9443")
    monkeypatch.setenv("EVA_OPERATOR_BIND_ADDRESS", "127.0.0.1")
    cfg = OperatorConfig.from_env()
    assert cfg.webhook_failure_policy == "Fail"
    assert cfg.webhook_url == "https://10.1.2.3:9443"
    assert cfg.bind_address == "127.0.0.1"


def test_the_operator_exits_2_naming_a_port_it_cannot_bind() -> None:
    code = (
        "import socket, sys; s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen();"
        "port = s.getsockname()[1];"
        "from eva_operator.main import main;"
        "main(['--bind-address', '127.0.0.1', '--metrics-port', str(port)])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "cannot serve /metrics on 127.0.0.1:" in out.stderr
    assert "Traceback" not in out.stderr

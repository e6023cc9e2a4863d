"""Settings are read from the environment; production mode refuses unsafe defaults."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.dburl import database_url_for_subprocess

ROOT = Path(__file__).resolve().parents[2]


def _run(args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in {"SECRET_KEY", "DEBUG"}}
    clean.update(env)
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=clean, capture_output=True, text=True, timeout=120
    )


def test_it_refuses_to_start_in_production_without_secret_key() -> None:
    result = _run(
        ["manage.py", "check"],
        DEBUG="false",
        ALLOWED_HOSTS="billing.example.com",
        DATABASE_URL=database_url_for_subprocess(),
    )
    assert result.returncode != 0
    assert "SECRET_KEY is required when DEBUG is false" in result.stderr


def test_it_refuses_to_start_in_production_without_allowed_hosts() -> None:
    result = _run(
        ["manage.py", "check"],
        DEBUG="false",
        SECRET_KEY="x" * 60,
        ALLOWED_HOSTS="",
        DATABASE_URL=database_url_for_subprocess(),
    )
    assert result.returncode != 0
    assert "ALLOWED_HOSTS is required" in result.stderr


def _check_deploy(**env: str) -> subprocess.CompletedProcess[str]:
    production = {
        "DEBUG": "false",
        "SECRET_KEY": "k" + "3Zq9-fT7_wLm2Pa8Rk1Vx5Nc0Hd4Gj6Ys" * 2,
        "ALLOWED_HOSTS": "billing.example.com",
        "DATABASE_URL": database_url_for_subprocess(),
        "STRIPE_API_KEY": "",
        "BILLING_DEMO_PAYMENTS": "",
    }
    return _run(
        ["manage.py", "check", "--deploy", "--fail-level", "WARNING"], **{**production, **env}
    )


def test_it_passes_check_deploy_with_production_settings() -> None:
    result = _check_deploy(STRIPE_API_KEY="sk_live_configured", STRIPE_WEBHOOK_SECRET="whsec_x")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_check_deploy_refuses_production_without_a_payment_provider() -> None:
    result = _check_deploy()
    assert result.returncode != 0
    assert "billing.E001" in result.stderr
    assert "STRIPE_API_KEY" in result.stderr


def test_check_deploy_warns_when_demo_payments_are_switched_on_in_production() -> None:
    result = _check_deploy(BILLING_DEMO_PAYMENTS="true")
    assert result.returncode != 0  # --fail-level WARNING
    assert "billing.W001" in result.stderr
    assert "billing.E001" not in result.stderr


def test_it_refuses_a_database_that_is_not_postgresql() -> None:
    result = _run(["manage.py", "check"], DATABASE_URL="sqlite:///tmp/x.db", DEBUG="true")
    assert result.returncode != 0
    assert "DATABASE_URL must point at PostgreSQL" in result.stderr


@pytest.mark.parametrize("raw", ["maybe", "2"])
def test_it_refuses_a_boolean_it_cannot_read(raw: str) -> None:
    result = _run(["manage.py", "check"], DEBUG=raw)
    assert result.returncode != 0
    assert "DEBUG must be true or false" in result.stderr


@pytest.mark.parametrize(("raw", "expected"), [("", "5"), ("off", "None"), ("20", "20")])
def test_prepared_statements_are_on_unless_turned_off(raw: str, expected: str) -> None:
    """Behind a pooler that keeps no prepared statements, DATABASE_PREPARE_THRESHOLD=off
    turns them off; the connection itself then prepares nothing."""
    environ = {"DATABASE_PREPARE_THRESHOLD": raw} if raw else {}
    result = _run(
        [
            "-c",
            "import django; django.setup(); from django.db import connection; "
            "connection.ensure_connection(); print(connection.connection.prepare_threshold)",
        ],
        DJANGO_SETTINGS_MODULE="billing_portal.settings",
        DEBUG="true",
        DATABASE_URL=database_url_for_subprocess(),
        **environ,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == expected


def test_a_prepare_threshold_that_is_not_a_number_is_refused() -> None:
    result = _run(
        ["manage.py", "check"],
        DEBUG="true",
        DATABASE_URL=database_url_for_subprocess(),
        DATABASE_PREPARE_THRESHOLD="sometimes",
    )
    assert result.returncode != 0
    assert "DATABASE_PREPARE_THRESHOLD must be a number of runs or off, not 'sometimes'" in (
        result.stderr
    )

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from leadcenter.env import env_bool, env_duration, env_int, env_list

ROOT = Path(__file__).resolve().parents[2]

PRODUCTION_ENV = {
    "DEBUG": "false",
    "SECRET_KEY": "k3J!x9-production-secret-that-is-long-and-random-enough-2026-%$#@",
    "ALLOWED_HOSTS": "leadcenter.example.com",
    "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/leadcenter_prod_check",
    "LEADCENTER_BASE_URL": "https://leadcenter.example.com",
    "ANYMAIL_WEBHOOK_SECRET": "hook:also-long-and-random",
}


def _manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in PRODUCTION_ENV}
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_production_settings_pass_check_deploy():
    result = _manage("check", "--deploy", "--fail-level", "WARNING", env=PRODUCTION_ENV)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_check_deploy_warns_about_the_development_secret_in_production():
    env = {**PRODUCTION_ENV, "SECRET_KEY": ""}
    env.pop("SECRET_KEY")
    # Without SECRET_KEY and with DEBUG off the settings refuse to load at all.
    result = _manage("check", env={**env, "SECRET_KEY": ""})
    assert result.returncode != 0
    assert "SECRET_KEY must be set" in result.stderr


def test_check_deploy_warns_about_sqlite_and_plain_http_in_production():
    env = {**PRODUCTION_ENV, "DATABASE_URL": "sqlite:////tmp/leadcenter-check.sqlite3"}
    env["LEADCENTER_BASE_URL"] = "http://leadcenter.example.com"

    result = _manage("check", "--deploy", env=env)

    assert "leadcenter.W002" in result.stderr + result.stdout
    assert "leadcenter.W003" in result.stderr + result.stdout


def test_a_wildcard_host_with_debug_on_is_warned_about():
    result = _manage("check", env={"DEBUG": "true", "ALLOWED_HOSTS": "*"})

    assert "leadcenter.W005" in result.stderr + result.stdout


def test_a_bad_setting_value_fails_at_start_up_with_its_name():
    result = _manage("check", env={"DEBUG": "maybe"})

    assert result.returncode != 0
    assert "DEBUG must be one of" in result.stderr


def _q_cluster_broker(env: dict[str, str]) -> list[str]:
    code = (
        "import django; django.setup(); from django.conf import settings;"
        "print(settings.Q_CLUSTER.get('redis'), settings.Q_CLUSTER.get('orm'))"
    )
    clean = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**clean, "DJANGO_SETTINGS_MODULE": "leadcenter.settings", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result.stdout.split()


def test_redis_url_switches_the_task_broker_to_redis():
    assert _q_cluster_broker({"REDIS_URL": "redis://127.0.0.1:6379/0"}) == [
        "redis://127.0.0.1:6379/0",
        "None",
    ]
    assert _q_cluster_broker({}) == ["None", "default"]


def test_task_retry_is_longer_than_the_task_timeout(settings):
    assert settings.Q_CLUSTER["retry"] > settings.Q_CLUSTER["timeout"]


def test_env_helpers_read_good_values(monkeypatch):
    monkeypatch.setenv("X_BOOL", "Yes")
    monkeypatch.setenv("X_INT", "42")
    monkeypatch.setenv("X_LIST", "a.example, b.example,,")
    monkeypatch.setenv("X_DUR", "12h")

    assert env_bool("X_BOOL", False) is True
    assert env_int("X_INT", 0) == 42
    assert env_list("X_LIST", []) == ["a.example", "b.example"]
    assert env_duration("X_DUR", "3d") == timedelta(hours=12)
    assert env_duration("X_UNSET", "3d") == timedelta(days=3)


@pytest.mark.parametrize(
    ("helper", "value", "message"),
    [
        (lambda: env_int("X", 1), "ten", "X must be an integer"),
        (lambda: env_int("X", 1, minimum=1), "0", "X must be at least 1"),
        (lambda: env_bool("X", True), "perhaps", "X must be one of"),
        (lambda: env_duration("X", "3d"), "3 weeks", "X must be a duration"),
        (lambda: env_duration("X", "3d"), "-5m", "X must be a positive duration"),
    ],
)
def test_env_helpers_refuse_bad_values(monkeypatch, helper, value, message):
    monkeypatch.setenv("X", value)

    with pytest.raises(ImproperlyConfigured, match=message):
        helper()

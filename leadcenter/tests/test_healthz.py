import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.django_db
def test_it_answers_200_when_the_database_answers(client):
    response = client.get("/healthz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok"}
    assert "no-cache" in response["Cache-Control"]


@pytest.mark.django_db
def test_it_rejects_post(client):
    assert client.post("/healthz").status_code == 405


def test_it_answers_503_when_the_database_is_unreachable():
    # A real unreachable server: nothing listens on port 1.
    code = (
        "import django; django.setup();"
        "from django.test import Client;"
        "r = Client().get('/healthz');"
        "print(r.status_code, r.json()['database'])"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "leadcenter.settings",
            "ALLOWED_HOSTS": "testserver",
            "DATABASE_URL": "postgres://postgres@127.0.0.1:1/nothing?connect_timeout=2",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.stdout.split() == ["503", "unreachable"], result.stderr

"""Grant-keeping settings refuse unsafe values naming the variable; the CLI commands work."""

from __future__ import annotations

import subprocess
import sys
import uuid

import psycopg
import pytest
from pydantic import ValidationError

from bluebutton.__main__ import main
from bluebutton.settings import describe_error
from bluebutton.sync.crypto import TokenCipher, new_key
from tests.factories import ROOT, make_settings
from tests.sync.conftest import with_database
from tests.test_main import service_env


@pytest.mark.parametrize(
    ("values", "variable"),
    [
        pytest.param({"database_url": "postgresql://h/db"}, "BLUEBUTTON_TOKEN_KEYS", id="url-without-keys"),
        pytest.param(
            {"database_url": "mysql://h/db", "token_keys": new_key()}, "BLUEBUTTON_DATABASE_URL", id="not-pg"
        ),
        pytest.param({"token_keys": "bm90IDMyIGJ5dGVz"}, "BLUEBUTTON_TOKEN_KEYS", id="short-key"),
        pytest.param({"token_keys": "not base64!"}, "BLUEBUTTON_TOKEN_KEYS", id="not-base64"),
        pytest.param({"admin_api_key": "too-short"}, "BLUEBUTTON_ADMIN_API_KEY", id="short-admin-key"),
    ],
)
def test_bad_sync_settings_name_the_variable(values: dict[str, str], variable: str) -> None:
    with pytest.raises(ValidationError) as caught:
        make_settings(**values)
    text = describe_error(caught.value)
    assert text.startswith(variable) and "\n" not in text


def test_sync_is_off_without_a_database_and_on_with_one() -> None:
    assert not make_settings().sync_enabled
    assert make_settings(database_url="embedded", token_keys=new_key()).sync_enabled
    assert not make_settings(database_url="", token_keys="").sync_enabled


def test_a_database_url_without_keys_stops_start_up_with_one_line(tmp_path) -> None:
    env = service_env(TLS="false", DATABASE_URL="postgresql://postgres@127.0.0.1:1/none")
    done = subprocess.run(
        [sys.executable, "-m", "bluebutton"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "BLUEBUTTON_TOKEN_KEYS" in lines[0], done.stderr


def test_keygen_prints_a_usable_key(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keygen"]) == 0
    key = capsys.readouterr().out.strip()
    TokenCipher.from_setting(key)


def test_unknown_commands_print_the_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["frobnicate"]) == 2
    assert "rotate-keys" in capsys.readouterr().err


def test_migrate_then_rotate_keys(
    database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    old, new = new_key(), new_key()
    for name, value in {"TLS": "false", "DATABASE_URL": database_url, "TOKEN_KEYS": old}.items():
        monkeypatch.setenv(f"BLUEBUTTON_{name}", value)
    monkeypatch.chdir(ROOT / "tests")
    assert main(["migrate"]) == 0
    assert "0001_grants" in capsys.readouterr().out
    assert main(["migrate"]) == 0
    assert "up to date" in capsys.readouterr().out

    grant_id = uuid.uuid4()
    cipher = TokenCipher.from_setting(old)
    with psycopg.connect(database_url) as connection:
        connection.execute(
            "INSERT INTO bluebutton_grants (id, patient, api_version, state, access_token_ct, "
            "refresh_token_ct) VALUES (%s, 'p', 2, 'active', %s, %s)",
            (grant_id, cipher.encrypt("access", grant_id), cipher.encrypt("refresh", grant_id)),
        )
    monkeypatch.setenv("BLUEBUTTON_TOKEN_KEYS", f"{new},{old}")
    assert main(["rotate-keys"]) == 0
    assert "1 grant(s)" in capsys.readouterr().out
    only_new = TokenCipher.from_setting(new)
    with psycopg.connect(database_url) as connection:
        row = connection.execute(
            "SELECT access_token_ct, refresh_token_ct FROM bluebutton_grants WHERE id = %s", (grant_id,)
        ).fetchone()
    assert row is not None
    access, refresh = row
    assert only_new.decrypt(access, grant_id) == "access"
    assert only_new.decrypt(refresh, grant_id) == "refresh"
    assert main(["rotate-keys"]) == 0
    assert "0 grant(s)" in capsys.readouterr().out


def test_commands_need_a_database(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BLUEBUTTON_TLS", "false")
    monkeypatch.delenv("BLUEBUTTON_DATABASE_URL", raising=False)
    monkeypatch.chdir(ROOT / "tests")
    assert main(["worker"]) == 2
    assert "BLUEBUTTON_DATABASE_URL" in capsys.readouterr().err


def test_a_worker_refused_by_the_database_exits_2_with_one_line(
    tmp_path, database_server: str, token_keys: str
) -> None:
    """A configuration error (here a database that does not exist) is the one way a worker stops
    by itself, and it says so with a non-zero code; an unreachable server is waited for instead."""
    missing = with_database(database_server, "bluebutton_no_such_database")
    env = service_env(TLS="false", DATABASE_URL=missing, TOKEN_KEYS=token_keys)
    done = subprocess.run(
        [sys.executable, "-m", "bluebutton", "worker"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("bluebutton worker:")]
    assert len(lines) == 1 and "does not exist" in lines[0], done.stderr

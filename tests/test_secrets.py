"""Secrets of the deployment: the generated cfg and admin password file are 0600, service logs
are created 0600, the task log server stays on loopback, and `peftflow doctor` flags a secret
file that other users can read, with the exact chmod that fixes it."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from peftflow.airflow import config as airflowcfg
from peftflow.airflow import services
from peftflow.cli import doctor
from peftflow.errors import ConfigError

PASSWORDS = "simple_auth_manager_passwords.json.generated"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture()
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "airflow_home"
    monkeypatch.setenv("AIRFLOW_HOME", str(home))
    monkeypatch.setenv("PEFTFLOW_AIRFLOW_HOME", str(home))
    return home


@pytest.fixture()
def usual_umask() -> Iterator[None]:
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_configure_writes_the_cfg_and_a_random_admin_password_0600_and_prints_neither(
        home: Path, usual_umask: None, capsys: pytest.CaptureFixture[str]) -> None:
    services.configure()
    cfg, passwords = home / "airflow.cfg", home / PASSWORDS
    assert _mode(cfg) == _mode(passwords) == 0o600
    assert _mode(home / "logs") == _mode(home / "run") == 0o700
    password = json.loads(passwords.read_text())["admin"]
    assert len(password) >= 20
    assert password not in capsys.readouterr().out


def test_reconfigure_keeps_the_password_and_the_secrets(home: Path) -> None:
    services.configure()
    before = ((home / PASSWORDS).read_text(), airflowcfg.existing(home, "jwt_secret"),
              airflowcfg.existing(home, "secret_key"))
    (home / PASSWORDS).chmod(0o644)
    services.configure()
    after = ((home / PASSWORDS).read_text(), airflowcfg.existing(home, "jwt_secret"),
             airflowcfg.existing(home, "secret_key"))
    assert after == before and all(after)
    assert _mode(home / PASSWORDS) == 0o600


def test_the_cfg_keeps_the_health_check_server_on_loopback_and_shares_one_secret_key(
        home: Path) -> None:
    services.configure()
    assert airflowcfg.existing(home, "scheduler_health_check_server_host") == "127.0.0.1"
    assert airflowcfg.existing(home, "host") == "127.0.0.1"  # [api] host, the default
    assert airflowcfg.existing(home, "simple_auth_manager_users") == "admin:admin"


def test_a_broken_password_file_is_an_error_that_says_how_to_start_over(home: Path) -> None:
    home.mkdir(parents=True)
    (home / PASSWORDS).write_text("{not json")
    with pytest.raises(ConfigError, match=r"not JSON.*Fix: rm .*json\.generated && "
                                          r"\./setup_airflow\.sh"):
        airflowcfg.seed_passwords(home)


def test_airflow_neither_generates_nor_prints_a_password_the_file_already_has(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """What keeps the password out of the api-server log: SimpleAuthManager.init() only
    generates (and prints) a password for a user missing from the file."""
    from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager

    path = airflowcfg.seed_passwords(tmp_path)
    seeded = path.read_text()
    monkeypatch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE", str(path))
    monkeypatch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS", "admin:admin")
    SimpleAuthManager().init()
    assert path.read_text() == seeded
    assert "Password for user" not in capsys.readouterr().out


def test_service_logs_are_created_0600_under_a_usual_umask(tmp_path: Path,
                                                           usual_umask: None) -> None:
    new, old = tmp_path / "scheduler.log", tmp_path / "api-server.log"
    old.write_text("from before\n")
    old.chmod(0o644)
    for path in (new, old):
        os.close(services.open_log(path))
        assert _mode(path) == 0o600
    assert old.read_text() == "from before\n"  # appended to, never truncated


def test_the_scheduler_runs_without_its_own_log_server_and_ours_binds_loopback() -> None:
    argv = services._argv("scheduler")
    assert "scheduler --skip-serve-logs" in argv[2] and "serve_task_logs()" in argv[2]
    assert services._argv("api-server")[1:] == ["api-server"]


@pytest.mark.parametrize(("hostname", "host"), [
    ("localhost", "127.0.0.1"),
    ("127.0.1.1", "127.0.1.1"),  # Debian's /etc/hosts entry for the machine's own name
    ("::1", "::1"),
    ("192.0.2.7", "127.0.0.1"),  # never a non-loopback address
    ("no-such-host.invalid", "127.0.0.1"),
])
def test_log_server_host_is_always_loopback(hostname: str, host: str) -> None:
    assert services.log_server_host(hostname) == host


def test_doctor_flags_a_world_readable_password_file_with_the_chmod_fix(home: Path) -> None:
    services.configure()
    assert doctor.secret_files_check().level == "ok"
    passwords = home / PASSWORDS
    passwords.chmod(0o644)
    log = home / "logs" / "api-server.log"
    log.write_text("")
    log.chmod(0o640)
    check = doctor.secret_files_check()
    assert check.level == "fail"
    assert f"{passwords} (644)" in check.detail
    assert check.detail.endswith(f"Fix: chmod 600 {passwords} {log}")


def test_doctor_flags_a_readable_audit_key(home: Path, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    services.configure()
    key = tmp_path / "keys" / "peftflow-audit.key"
    key.parent.mkdir()
    key.write_text("00" * 32)
    key.chmod(0o604)
    monkeypatch.setenv("PEFTFLOW_AUDIT_KEY", str(key))
    check = doctor.secret_files_check()
    assert check.level == "fail" and check.detail.endswith(f"Fix: chmod 600 {key}")

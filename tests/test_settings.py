"""Settings: defaults, validation naming the variable, the generated secret."""

from __future__ import annotations

import importlib.util
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from opsline.settings import Settings, SettingsError, load_settings


def test_embedded_default_needs_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings()
    assert settings.sqlalchemy_url.startswith("sqlite:///")
    assert settings.sqlalchemy_url.endswith("var/opsline.db")


def test_missing_secret_is_generated_once_with_mode_0600(tmp_path: Path) -> None:
    settings = Settings(var_dir=tmp_path / "var")
    first = settings.secret
    path = tmp_path / "var" / "secret_key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(first) >= 48
    assert Settings(var_dir=tmp_path / "var").secret == first


def test_a_short_secret_key_is_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in (
        ("OPSLINE_SECRET_KEY", ""),
        ("OPSLINE_SECRET_KEY", "a" * 31),
        ("OPSLINE_PREVIOUS_SECRET_KEYS", '["' + "b" * 40 + '", "short"]'),
    ):
        with monkeypatch.context() as env:
            env.setenv(name, value)
            with pytest.raises(SettingsError) as refused:
                load_settings()
        assert name in str(refused.value) and "at least 32 bytes" in str(refused.value)


def test_an_empty_or_cut_key_file_stops_the_process(tmp_path: Path) -> None:
    """An empty key would let anyone sign tokens: never used, whatever left it so."""
    path = tmp_path / "var" / "secret_key"
    path.parent.mkdir()
    path.write_bytes(b"")
    with pytest.raises(SettingsError) as refused:
        Settings(var_dir=tmp_path / "var").secret  # noqa: B018
    assert "secret_key" in str(refused.value) and "delete the file" in str(refused.value)


def test_processes_starting_together_read_one_whole_key(tmp_path: Path) -> None:
    script = (
        "import sys; from pathlib import Path; from opsline.settings import Settings;"
        " sys.stdout.write(Settings(var_dir=Path(sys.argv[1])).secret.decode())"
    )
    starts = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(tmp_path / "var")], stdout=subprocess.PIPE
        )
        for _ in range(6)
    ]
    keys = {start.communicate(timeout=60)[0] for start in starts}
    assert all(start.returncode == 0 for start in starts)
    assert len(keys) == 1 and len(keys.pop()) >= 48
    assert [p.name for p in (tmp_path / "var").iterdir()] == ["secret_key"]


def test_invalid_settings_name_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPSLINE_PORT", "not-a-port")
    monkeypatch.setenv("OPSLINE_DATABASE_URL", "mysql://x")
    monkeypatch.setenv("OPSLINE_RATE_LIMIT_API", "lots")
    with pytest.raises(SettingsError) as excinfo:
        load_settings()
    message = str(excinfo.value)
    for name in ("OPSLINE_PORT", "OPSLINE_DATABASE_URL", "OPSLINE_RATE_LIMIT_API"):
        assert name in message


def test_postgres_urls_use_psycopg3() -> None:
    settings = Settings(database_url="postgresql://postgres@127.0.0.1:5432/test")
    assert settings.sqlalchemy_url.startswith("postgresql+psycopg://")


def test_secret_is_not_in_the_settings_repr() -> None:
    settings = Settings(secret_key="a-very-secret-value-1234567890-abcdefgh")
    assert "a-very-secret-value" not in repr(settings)
    assert "a-very-secret-value" not in str(settings.model_dump())


def test_the_server_runs_python_s_loop_where_its_sqlite_work_runs_inline(tmp_path: Path) -> None:
    sqlite = Settings(var_dir=tmp_path)
    assert sqlite.server_event_loop == "asyncio"
    # With Redis, requests' work goes to the thread pool; on PostgreSQL it is awaited.
    assert Settings(var_dir=tmp_path, redis_url="redis://127.0.0.1:6379/0").server_event_loop == (
        "uvloop"
    )
    postgres = Settings(database_url="postgresql+psycopg://postgres@127.0.0.1/test")
    assert postgres.server_event_loop == "uvloop"
    assert Settings(var_dir=tmp_path, event_loop="uvloop").server_event_loop == "uvloop"
    assert postgres.model_copy(update={"event_loop": "asyncio"}).server_event_loop == "asyncio"


def test_auto_falls_back_to_python_s_loop_without_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "uvloop" else real(name, *a)
    )
    postgres = Settings(database_url="postgresql+psycopg://postgres@127.0.0.1/test")
    assert postgres.server_event_loop == "asyncio"


def test_an_unknown_event_loop_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPSLINE_EVENT_LOOP", "trio")
    with pytest.raises(SettingsError, match="OPSLINE_EVENT_LOOP"):
        load_settings()

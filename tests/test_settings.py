from pathlib import Path

import pytest
from pydantic import ValidationError

from townsquare.cli import settings_reference
from townsquare.settings import Settings, env_name, iter_settings

ROOT = Path(__file__).resolve().parents[1]


def test_environment_sets_nested_values(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TOWNSQUARE_TEXT__N_CTX", "4096")
    monkeypatch.setenv("TOWNSQUARE_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("TOWNSQUARE_DATABASE_URL", raising=False)  # the default, on any suite
    settings = Settings()
    assert settings.text.n_ctx == 4096
    assert settings.resolved_database_url == f"sqlite:///{tmp_path / 'townsquare.db'}"


def test_unknown_and_invalid_values_are_refused() -> None:
    with pytest.raises(ValidationError, match="log_level"):
        Settings(log_level="LOUD")
    with pytest.raises(ValidationError, match="n_ctx"):
        Settings(text={"n_ctx": 10})
    with pytest.raises(ValidationError):
        Settings(no_such_setting=1)  # type: ignore[call-arg]


def test_every_setting_has_a_description() -> None:
    missing = [name for name, _, description in iter_settings(Settings) if not description]
    assert missing == []


def test_secrets_are_masked() -> None:
    values = dict((n, v) for n, v, _ in iter_settings(Settings(text={"api_key": "sk-123"})))
    assert values["text.api_key"] == "********"


def test_env_name() -> None:
    assert env_name("text.n_ctx") == "TOWNSQUARE_TEXT__N_CTX"


def test_settings_reference_is_current() -> None:
    page = (ROOT / "docs" / "settings.md").read_text()
    assert page == settings_reference(), "docs/settings.md is stale: run `make docs`"

import logging
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from townsquare.cli import app
from townsquare.identity import user_for_key
from townsquare.settings import Settings
from townsquare.storage.db import make_engine, make_sessions

runner = CliRunner()


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TOWNSQUARE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("TOWNSQUARE_TEXT__BACKEND", "fake")
    monkeypatch.setenv("TOWNSQUARE_EMBED__BACKEND", "fake")
    monkeypatch.setenv("TOWNSQUARE_SAFETY__MODERATION", "off")  # the fakes' replies are scripted
    monkeypatch.setenv("TOWNSQUARE_LOG_JSON", "false")
    return tmp_path


def key_in(output: str) -> str:
    return next(word for word in output.split() if word.startswith("ts_"))


def test_init_creates_one_admin_once(env: Path) -> None:
    first = runner.invoke(app, ["init"])
    assert first.exit_code == 0, first.output
    key = key_in(first.output)
    assert "/login" in first.output
    second = runner.invoke(app, ["init"])
    assert "ts_" not in second.output
    engine = make_engine(Settings().resolved_database_url)  # SQLite here, or PostgreSQL
    with make_sessions(engine)() as db:
        user = user_for_key(db, key)
        assert user is not None and user.role == "admin"
    engine.dispose()


def test_init_takes_the_first_admin_key_from_the_secret_and_never_prints_it(
    env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bare = runner.invoke(app, ["init", "--never-print-key"])
    assert (
        bare.exit_code == 1 and "TOWNSQUARE_ADMIN_KEY" in bare.output and "ts_" not in bare.output
    )
    monkeypatch.setenv("TOWNSQUARE_ADMIN_KEY", "ts_short")
    refused = runner.invoke(app, ["init"])
    assert refused.exit_code == 1 and "at least 32 more characters" in refused.output
    given = "ts_" + "k3y" * 12
    monkeypatch.setenv("TOWNSQUARE_ADMIN_KEY", given)
    made = runner.invoke(app, ["init"])
    assert made.exit_code == 0, made.output
    assert "ts_" not in made.output.replace("TOWNSQUARE_ADMIN_KEY", "")  # pod logs stay clean
    engine = make_engine(Settings().resolved_database_url)
    with make_sessions(engine)() as db:
        user = user_for_key(db, given)
        assert user is not None and user.role == "admin"
    engine.dispose()


def test_users_create_list_and_key(env: Path) -> None:
    created = runner.invoke(app, ["users", "create", "bea", "--role", "creator"])
    assert created.exit_code == 0, created.output
    duplicate = runner.invoke(app, ["users", "create", "bea"])
    assert duplicate.exit_code == 1 and "already exists" in duplicate.output
    bad_role = runner.invoke(app, ["users", "create", "cy", "--role", "king"])
    assert bad_role.exit_code == 1 and "member, creator, admin" in bad_role.output
    listed = runner.invoke(app, ["users", "list"])
    assert "bea" in listed.output and "creator" in listed.output
    again = runner.invoke(app, ["users", "key", "bea"])
    assert again.exit_code == 0 and key_in(again.output) != key_in(created.output)
    assert runner.invoke(app, ["users", "key", "nobody"]).exit_code == 1


def test_settings_prints_values_and_descriptions(env: Path) -> None:
    result = runner.invoke(app, ["settings"], env={"COLUMNS": "400"})
    assert result.exit_code == 0
    assert "TOWNSQUARE_TEXT__BACKEND" in result.output and "'fake'" in result.output
    assert "Context window in tokens" in result.output


def test_doctor_passes_and_fails_with_a_fix(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert runner.invoke(app, ["init"]).exit_code == 0
    ok = runner.invoke(app, ["doctor"])
    assert ok.exit_code == 0, ok.output
    assert "All checks passed" in ok.output
    monkeypatch.setenv("TOWNSQUARE_TEXT__BACKEND", f"llamacpp:{env / 'missing.gguf'}")
    bad = runner.invoke(app, ["doctor"])
    assert bad.exit_code == 1
    assert "FAIL" in bad.output and "Point TOWNSQUARE_TEXT__BACKEND" in bad.output


def test_doctor_reports_an_unmigrated_database(
    env: Path, empty_database: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    if empty_database is not None:  # PostgreSQL: a database nothing has migrated
        monkeypatch.setenv("TOWNSQUARE_DATABASE_URL", empty_database)
    result = runner.invoke(app, ["doctor"])
    assert result.exit_code == 1 and "townsquare init" in result.output


def test_chat_streams_in_the_terminal(env: Path) -> None:
    result = runner.invoke(app, ["chat"], input="hello there\n/exit\n")
    assert result.exit_code == 0, result.output
    assert "echo: hello there" in result.output


def test_chat_as_a_member_answers_with_the_towns_tools(
    env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert runner.invoke(app, ["seed", "demo"]).exit_code == 0
    assert runner.invoke(app, ["index", "rebuild"]).exit_code == 0
    missing = runner.invoke(app, ["chat", "--as", "nobody"], input="/exit\n")
    assert missing.exit_code == 1 and "no user 'nobody'" in missing.output
    # one of the router's own examples: the fake embeddings find it exactly
    monkeypatch.setenv("TOWNSQUARE_ASSISTANT__TOOL_MODE", "router")
    result = runner.invoke(app, ["chat", "--as", "mia"], input="Is anyone selling a sofa?\n/exit\n")
    assert result.exit_code == 0, result.output
    assert "listings for “sofa”" in result.output and "[listing] id: l-" in result.output
    assert "echo:" not in result.output  # the tool answered, not the model


def test_seed_demo_once(env: Path) -> None:
    first = runner.invoke(app, ["seed", "demo"])
    assert first.exit_code == 0, first.output
    assert "sol.rivera" in first.output and "ts_" in first.output
    again = runner.invoke(app, ["seed", "demo"])
    assert again.exit_code == 1 and "--if-empty" in again.output
    quiet = runner.invoke(app, ["seed", "demo", "--if-empty"])
    assert quiet.exit_code == 0 and "already there" in quiet.output


def test_ingest_jsonl_file(env: Path) -> None:
    users = env / "users.jsonl"
    users.write_text(
        '{"external_id": "u-1", "name": "una"}\n\n{"external_id": "u-2", "name": "bo"}\n'
    )
    result = runner.invoke(app, ["ingest", "users", str(users)])
    assert result.exit_code == 0, result.output
    assert "2 created" in result.output
    again = runner.invoke(app, ["ingest", "users", str(users)])
    assert "2 unchanged" in again.output
    bad = env / "bad.jsonl"
    bad.write_text(
        '{"external_id": "u-3", "name": "Not Valid"}\n{"external_id": "u-4", "name": "ok"}\n'
    )
    refused = runner.invoke(app, ["ingest", "users", str(bad)])
    assert (
        refused.exit_code == 1
        and "row 1" in refused.output
        and "nothing was stored" in refused.output
    )
    partial = runner.invoke(app, ["ingest", "users", str(bad), "--partial"])
    assert (
        partial.exit_code == 0 and "1 created" in partial.output and "1 rejected" in partial.output
    )
    assert runner.invoke(app, ["ingest", "gizmos", str(bad)]).exit_code == 2


def test_index_rebuild_is_resumable_and_search_finds(env: Path) -> None:
    assert runner.invoke(app, ["seed", "demo"]).exit_code == 0
    first = runner.invoke(app, ["index", "rebuild"])
    assert first.exit_code == 0, first.output
    assert "listings: 500 indexed, 0 unchanged" in first.output
    again = runner.invoke(app, ["index", "rebuild", "--collection", "listings"])
    assert "listings: 0 indexed, 500 unchanged, 0 removed" in again.output
    assert runner.invoke(app, ["index", "rebuild", "--collection", "gizmos"]).exit_code == 2
    found = runner.invoke(
        app, ["search", "kids bike", "--category", "bikes", "--as", "admin"], env={"COLUMNS": "200"}
    )
    assert found.exit_code == 1  # no admin in a seeded-only database
    runner.invoke(app, ["users", "create", "root", "--role", "admin"])
    found = runner.invoke(
        app, ["search", "kids bike", "--category", "bikes", "--as", "root"], env={"COLUMNS": "200"}
    )
    assert found.exit_code == 0, found.output
    assert "bikes" in found.output and "matching listings" in found.output
    bad = runner.invoke(app, ["search", "bike", "--category", "spaceships", "--as", "root"])
    assert bad.exit_code == 1 and "Use one of" in bad.output


def test_suggest_comments(env: Path) -> None:
    assert runner.invoke(app, ["seed", "demo"]).exit_code == 0
    runner.invoke(app, ["users", "create", "root", "--role", "admin"])
    unindexed = runner.invoke(app, ["suggest", "comments", "p-001", "--as", "root"])
    assert unindexed.exit_code == 1 and "Not enough to suggest from" in unindexed.output
    assert runner.invoke(app, ["index", "rebuild"]).exit_code == 0
    result = runner.invoke(app, ["suggest", "comments", "p-001", "--count", "2", "--as", "root"])
    assert result.exit_code == 0, result.output
    # the default writing is the extractive core: the town's own comments on similar posts
    suggestions = [line for line in result.output.splitlines() if line.startswith("- ")]
    assert len(suggestions) == 2 and "fake text" not in result.output
    assert "generation" in result.output
    missing = runner.invoke(app, ["suggest", "comments", "p-none", "--as", "root"])
    assert missing.exit_code == 1 and "no post 'p-none'" in missing.output
    bad = runner.invoke(
        app, ["suggest", "comments", "p-001", "--tone", "sarcastic", "--as", "root"]
    )
    assert bad.exit_code == 2


def test_summarize(env: Path) -> None:
    assert runner.invoke(app, ["seed", "demo"]).exit_code == 0
    assert runner.invoke(app, ["index", "rebuild"]).exit_code == 0
    runner.invoke(app, ["users", "create", "root", "--role", "admin"])
    result = runner.invoke(app, ["summarize", "kids bike", "--as", "root"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    # the default writing is the extractive core: each sentence a source's own words
    assert "[1]" in result.output and "[1] " in result.output and "fake text" not in result.output


def test_group_topics_and_catch_up(env: Path) -> None:
    assert runner.invoke(app, ["seed", "demo"]).exit_code == 0
    runner.invoke(app, ["users", "create", "root", "--role", "admin"])
    topics = runner.invoke(
        app, ["suggest", "topics", "g-sunday-bakers", "--count", "2", "--as", "root"]
    )
    assert topics.exit_code == 0, topics.output
    assert "generation" in topics.output
    caught = runner.invoke(
        app, ["catch-up", "g-sunday-bakers", "--since", "2026-01-01T00:00:00+00:00", "--as", "root"]
    )
    assert caught.exit_code == 0, caught.output
    assert "“" in caught.output and "(m-sunday-bakers-" in caught.output
    assert (
        runner.invoke(
            app, ["catch-up", "g-sunday-bakers", "--since", "soon", "--as", "root"]
        ).exit_code
        == 2
    )
    assert runner.invoke(app, ["catch-up", "g-nope", "--as", "root"]).exit_code == 1


def test_describe(env: Path) -> None:
    assert runner.invoke(app, ["seed", "demo"]).exit_code == 0
    runner.invoke(app, ["users", "create", "root", "--role", "admin"])
    result = runner.invoke(app, ["describe", "l-0001", "--tone", "professional", "--as", "root"])
    assert result.exit_code == 0, result.output
    # the default writing is the extractive core: a template of the listing's own facts
    assert "For sale: " in result.output and "(draft " in result.output
    assert "removed as invented: 0" in result.output
    assert (
        runner.invoke(app, ["describe", "l-0001", "--length", "epic", "--as", "root"]).exit_code
        == 2
    )


def test_suggest_replies(env: Path) -> None:
    assert runner.invoke(app, ["seed", "demo"]).exit_code == 0
    result = runner.invoke(app, ["suggest", "replies", "dm-sol.rivera-00", "--as", "sol.rivera"])
    assert result.exit_code == 0, result.output
    # the default writing is the extractive core: the creator's own past replies
    assert "in your style" in result.output and "fake text" not in result.output
    assert sum(line.startswith("- ") for line in result.output.splitlines()) == 3
    assert (
        runner.invoke(app, ["suggest", "replies", "dm-sol.rivera-00", "--as", "mia"]).exit_code == 1
    )


def test_settings_and_doctor_never_print_passwords(
    env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "TOWNSQUARE_DATABASE_URL", "postgresql+psycopg://town:s3cr3t-pw@127.0.0.1:1/x"
    )
    monkeypatch.setenv("TOWNSQUARE_SEARCH__VECTOR_INDEX", "pgvector:postgresql://v:an0ther@h/db")
    shown = runner.invoke(app, ["settings"])
    assert "town:***@127.0.0.1" in shown.output and "v:***@h" in shown.output
    checked = runner.invoke(app, ["doctor"])
    for result in (shown, checked):
        assert "s3cr3t" not in result.output and "an0ther" not in result.output


def test_settings_lines_are_never_cut(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    output = runner.invoke(app, ["settings"]).output
    line = next(x for x in output.splitlines() if x.startswith("TOWNSQUARE_SERVER__CONTENT_SEC"))
    assert line.endswith("frame-ancestors 'none'")


def test_the_data_directory_is_absolute_printed_and_new_ones_are_flagged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOWNSQUARE_TEXT__BACKEND", "fake")
    monkeypatch.setenv("TOWNSQUARE_EMBED__BACKEND", "fake")
    monkeypatch.delenv("TOWNSQUARE_DATA_DIR", raising=False)
    # the default town: a SQLite file in the default data directory (whatever the suite runs on)
    monkeypatch.delenv("TOWNSQUARE_DATABASE_URL", raising=False)
    monkeypatch.delenv("TOWNSQUARE_SEARCH__VECTOR_INDEX", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    first = runner.invoke(app, ["init"])
    town = tmp_path / "xdg" / "townsquare"
    assert first.exit_code == 0 and f"data directory: {town} is new" in first.output
    # from another working directory, the same town: no second database
    monkeypatch.chdir(tmp_path)
    second = runner.invoke(app, ["users", "list"])
    assert f"data directory: {town}" in second.output and "is new" not in second.output
    assert "admin" in second.output
    assert not (elsewhere / "data").exists() and not (tmp_path / "data").exists()


def test_commands_that_do_not_generate_never_load_the_chat_model(
    env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from townsquare.backends import registry

    built: list[str] = []
    real = registry.build_text_backend
    monkeypatch.setattr(
        registry, "build_text_backend", lambda s: built.append(s.backend) or real(s)
    )
    assert runner.invoke(app, ["init"]).exit_code == 0
    assert runner.invoke(app, ["seed", "demo"]).exit_code == 0
    for command in (["search", "bike"], ["index", "rebuild"], ["users", "list"]):
        result = runner.invoke(app, command)
        assert result.exit_code == 0, result.output
    assert built == []
    # the extractive core (the default writing) needs no chat model either
    assert runner.invoke(app, ["describe", "l-0000"]).exit_code == 0
    assert built == []
    drafted = runner.invoke(app, ["describe", "l-0000"], env={"TOWNSQUARE_WRITING": "model"})
    assert drafted.exit_code == 0, drafted.output
    assert built == ["fake"]


def test_json_logs_carry_no_colour_codes() -> None:
    import json
    import logging

    from townsquare.observability import JsonFormatter

    record = logging.makeLogRecord(
        {
            "msg": "Uvicorn running on %s",
            "args": ("http://x",),
            "color_message": "Uvicorn running on \x1b[1m%s\x1b[0m",
        }
    )
    line = JsonFormatter().format(record)
    assert "\x1b" not in line and "\\u001b" not in line
    assert json.loads(line)["message"] == "Uvicorn running on http://x"


def test_model_failures_are_logged_as_warnings(
    client: Any,
    member_key: str,
    fake_text: Any,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from townsquare.errors import BackendError

    async def crash(*_: Any) -> Any:
        raise BackendError("the engine crashed")

    monkeypatch.setattr(fake_text, "complete", crash)
    with caplog.at_level(logging.INFO, logger="townsquare"):
        response = client.post(
            "/v1/chat/completions",
            json={"model": "fake", "messages": [{"role": "user", "content": "hi"}]},
            headers={"Authorization": f"Bearer {member_key}"},
        )
    assert response.status_code == 502
    levels = {r.levelno for r in caplog.records if "502" in r.getMessage()}
    assert levels and min(levels) >= logging.WARNING

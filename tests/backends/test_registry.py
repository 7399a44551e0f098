from pathlib import Path

import pytest

from townsquare.backends.fake import FakeText
from townsquare.backends.openai_compat import OpenAICompatText
from townsquare.backends.registry import build_text_backend, parse_spec
from townsquare.errors import BackendUnavailable, InvalidRequest
from townsquare.settings import TextSettings


def test_parse_specs() -> None:
    assert parse_spec("fake") == ("fake", "")
    assert parse_spec("llamacpp:bundled") == ("llamacpp", "bundled")
    assert parse_spec("openai:http://h:1/v1#m") == ("openai", "http://h:1/v1#m")


@pytest.mark.parametrize("spec", ["", "vllm:http://x", "llamacpp:", "openai:http://x/v1"])
def test_bad_specs_say_what_to_write(spec: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_spec(spec)
    assert "llamacpp:" in info.value.message or "'#'" in info.value.message


def test_builds_fake_and_openai() -> None:
    assert isinstance(build_text_backend(TextSettings(backend="fake")), FakeText)
    remote = build_text_backend(
        TextSettings(backend="openai:http://127.0.0.1:9/v1#qwen", model_alias="big")
    )
    assert isinstance(remote, OpenAICompatText)
    assert (remote.remote_model, remote.model_id) == ("qwen", "big")


def test_missing_gguf_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(BackendUnavailable, match="does not exist"):
        build_text_backend(TextSettings(backend=f"llamacpp:{tmp_path / 'none.gguf'}"))

"""The bigger local model's assembly: slices joined, kept only at the pinned sha256 (local files
stand in for the six wheels' slices)."""

import hashlib
from pathlib import Path

import pytest

from townsquare.backends.bigger_model import assemble, bigger_model_path, part_files
from townsquare.backends.registry import model_path_for
from townsquare.errors import BackendUnavailable


def slices(tmp_path: Path) -> tuple[list[Path], str]:
    parts = []
    for i, data in enumerate([b"GGUF" + b"a" * 3000, b"b" * 5000, b"c" * 17]):
        part = tmp_path / f"part0{i + 1}.bin"
        part.write_bytes(data)
        parts.append(part)
    whole = b"".join(p.read_bytes() for p in parts)
    return parts, hashlib.sha256(whole).hexdigest()


def test_the_slices_join_in_order_and_are_kept_only_at_the_pinned_hash(tmp_path: Path) -> None:
    parts, pinned = slices(tmp_path)
    models = tmp_path / "models"
    path = assemble(models, parts=parts, expected_sha256=pinned, name="m.gguf")
    assert path.read_bytes() == b"".join(p.read_bytes() for p in parts)
    assert bigger_model_path(models, expected_sha256=pinned, name="m.gguf") == path
    # one slice out of order: another hash, nothing kept, no half file left behind
    path.unlink()
    with pytest.raises(BackendUnavailable, match="not the pinned"):
        assemble(models, parts=parts[::-1], expected_sha256=pinned, name="m.gguf")
    assert list(models.iterdir()) == []


def test_a_model_changed_on_disk_is_refused_before_loading(tmp_path: Path) -> None:
    parts, pinned = slices(tmp_path)
    models = tmp_path / "models"
    path = assemble(models, parts=parts, expected_sha256=pinned, name="m.gguf")
    with path.open("ab") as f:
        f.write(b"x")
    with pytest.raises(BackendUnavailable, match="changed on disk"):
        bigger_model_path(models, expected_sha256=pinned, name="m.gguf")


def test_missing_wheels_and_model_say_how_to_get_them(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import importlib.metadata

    def absent(name: str) -> None:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", absent)
    with pytest.raises(BackendUnavailable, match="make bigger-model"):
        part_files()
    with pytest.raises(BackendUnavailable, match="not assembled"):
        model_path_for("qwen-0.5b", tmp_path / "models")

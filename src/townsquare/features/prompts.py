"""The one Jinja environment for prompts: every feature's ``prompts/*.j2``, plain text (never
HTML-escaped), strict about missing values."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import jinja2

FEATURES = Path(__file__).parent


@cache
def environment() -> jinja2.Environment:
    """The environment, loading from ``features/`` (names like ``search/prompts/summary.j2``)."""
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(FEATURES),
        autoescape=False,  # plain-text prompts, never HTML
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render(feature_file: str, template: str, **values: Any) -> str:
    """Render ``prompts/<template>`` of the feature whose module is ``feature_file``."""
    feature = Path(feature_file).resolve().parent.relative_to(FEATURES.resolve())
    name = f"{feature.as_posix()}/prompts/{template}"
    return environment().get_template(name).render(**values).strip()

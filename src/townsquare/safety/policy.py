"""Per-community moderation policy: for each hazard code, ``block``, ``warn`` (allowed and
logged) or ``allow``, with the score threshold at which the code applies.

A group's policy is the built-in defaults, overlaid by the community's default policy, overlaid
by the group's own rules. Admins edit the default and each group's rules over the API; every
replica reads them again after ``safety.policy_cache_s``.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, cast, get_args

from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from townsquare.errors import InvalidField
from townsquare.safety.taxonomy import CODES, HAZARDS
from townsquare.storage.tables import ModerationPolicyRow, utcnow

Action = Literal["block", "warn", "allow"]
ACTIONS: tuple[str, ...] = get_args(Action)
DEFAULT_SCOPE = "default"

# Specialised advice (S6) is everyday talk in a community ("what does the leaflet say?"):
# logged, not refused. Profanity (X5) depends on the community: logged by default.
_BLOCK: Action = "block"
BUILT_IN: dict[str, Action] = {**{code: _BLOCK for code in CODES}, "S6": "warn", "X5": "warn"}


class RuleIn(BaseModel):
    """One code's rule; an omitted threshold keeps the one in force."""

    action: str | None = Field(None, description="block, warn or allow")
    threshold: float | None = Field(None, ge=0.0, le=1.0)


class PolicyIn(BaseModel):
    """Rules by hazard code. Codes left out keep what the layer below says; ``null`` removes
    this layer's rule for a code."""

    rules: dict[str, RuleIn | None] = Field(
        description="Hazard code (S1-S14, X1-X5) -> {action, threshold}"
    )


@dataclass(frozen=True, slots=True)
class Rule:
    """What a code does in one scope."""

    action: Action
    threshold: float


@dataclass(frozen=True, slots=True)
class Policy:
    """The rules in force for every code."""

    rules: Mapping[str, Rule]

    def as_json(self) -> dict[str, dict[str, Any]]:
        """``{code: {"action", "threshold", "name"}}`` in taxonomy order."""
        return {
            code: {
                "action": self.rules[code].action,
                "threshold": self.rules[code].threshold,
                "name": HAZARDS[code].name,
            }
            for code in CODES
        }


def validate(body: PolicyIn) -> dict[str, dict[str, Any] | None]:
    """The rules as stored, or 422 naming every unknown code and action."""
    unknown_codes = [c for c in body.rules if c not in HAZARDS]
    unknown_actions = sorted(
        {
            r.action
            for r in body.rules.values()
            if r is not None and r.action is not None and r.action not in ACTIONS
        }
    )
    problems = []
    if unknown_codes:
        problems.append(
            f"unknown hazard codes {', '.join(unknown_codes)} (use S1-S14 or X1-X5; "
            "GET /api/moderation/taxonomy lists them)"
        )
    if unknown_actions:
        problems.append(f"unknown actions {', '.join(unknown_actions)} (use block, warn or allow)")
    if problems:
        raise InvalidField("Fix the policy: " + "; ".join(problems) + ".", "rules")
    return {
        code: None if rule is None else rule.model_dump(exclude_none=True)
        for code, rule in body.rules.items()
    }


def group_scope(group_id: int) -> str:
    """The storage key of a group's rules."""
    return f"group:{group_id}"


class PolicyStore:
    """Reads and writes policies; keeps each scope's rules for ``cache_s`` seconds."""

    def __init__(
        self, sessions: sessionmaker[Session], *, default_threshold: float, cache_s: float
    ) -> None:
        self._sessions = sessions
        self.default_threshold = default_threshold
        self.cache_s = cache_s
        self._cache: dict[str, tuple[float, dict[str, dict[str, Any] | None]]] = {}
        self._lock = threading.Lock()

    def _layer(self, scope: str) -> dict[str, dict[str, Any] | None]:
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(scope)
            if cached is not None and now - cached[0] < self.cache_s:
                return cached[1]
        with self._sessions() as session:
            row = session.get(ModerationPolicyRow, scope)
            rules = cast(dict[str, dict[str, Any] | None], json.loads(row.rules)) if row else {}
        with self._lock:
            self._cache[scope] = (now, rules)
        return rules

    def rules(self, scope: str) -> dict[str, dict[str, Any] | None]:
        """The rules stored for one scope (not merged)."""
        return dict(self._layer(scope))

    def policy(self, group_id: int | None) -> Policy:
        """The policy in force in a group (None: outside any group)."""
        merged = {code: Rule(action, self.default_threshold) for code, action in BUILT_IN.items()}
        layers = [DEFAULT_SCOPE] + ([group_scope(group_id)] if group_id is not None else [])
        for scope in layers:
            for code, rule in self._layer(scope).items():
                if rule is None or code not in merged:
                    continue
                merged[code] = Rule(
                    cast(Action, rule.get("action", merged[code].action)),
                    float(rule.get("threshold", merged[code].threshold)),
                )
        return Policy(merged)

    def update(self, scope: str, body: PolicyIn) -> dict[str, dict[str, Any] | None]:
        """Overlay ``body`` on a scope's stored rules (``null`` removes a code's rule)."""
        changes = validate(body)
        try:
            current = self._write(scope, changes)
        except IntegrityError:  # another admin created the scope's row first: overlay on it
            current = self._write(scope, changes)
        with self._lock:
            self._cache.pop(scope, None)
        return current

    def _write(
        self, scope: str, changes: dict[str, dict[str, Any] | None]
    ) -> dict[str, dict[str, Any] | None]:
        with self._sessions.begin() as session:
            row = session.execute(
                select(ModerationPolicyRow)
                .where(ModerationPolicyRow.scope == scope)
                .with_for_update()  # PostgreSQL: two admins' edits apply one after the other
            ).scalar_one_or_none()
            current: dict[str, Any] = json.loads(row.rules) if row else {}
            for code, rule in changes.items():
                if rule is None:
                    current.pop(code, None)
                else:
                    current[code] = {**(current.get(code) or {}), **rule}
            if row is None:
                session.add(ModerationPolicyRow(scope=scope, rules=json.dumps(current)))
            else:
                row.rules = json.dumps(current)
                row.updated_at = utcnow()
        return current

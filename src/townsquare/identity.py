"""Users, roles, API keys and web sessions.

Keys look like ``ts_<43 url-safe chars>`` (256 random bits). Only their SHA-256 is stored; the
key itself is shown once, when it is created.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from townsquare.errors import InvalidRequest
from townsquare.storage.tables import ROLES, ApiKey, User, WebSession

KEY_PREFIX = "ts_"
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def _as_utc(moment: datetime) -> datetime:
    # SQLite hands back naive datetimes; everything stored is UTC.
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def create_user(
    db: Session, name: str, *, role: str = "member", display_name: str = "", key: str | None = None
) -> tuple[User, str]:
    """Create a user and a first API key (``key``, or a random one); returns (user, key). The
    caller commits."""
    if not NAME_PATTERN.match(name):
        raise InvalidRequest(
            f"'{name}' is not a valid user name: use 1-64 lowercase letters, digits, '.', '_' "
            "or '-', starting with a letter or digit."
        )
    if role not in ROLES:
        raise InvalidRequest(f"Unknown role '{role}'. Use one of: {', '.join(ROLES)}.")
    if db.scalar(select(User).where(User.name == name)) is not None:
        raise InvalidRequest(
            f"A user named '{name}' already exists. Pick another name, or give them a new key "
            f"with `townsquare users key {name}`."
        )
    user = User(name=name, role=role, display_name=display_name or name)
    db.add(user)
    db.flush()
    return user, issue_key(db, user, label="first key", key=key)


def issue_key(db: Session, user: User, *, label: str = "", key: str | None = None) -> str:
    """Create and return a new API key for ``user`` (stored hashed): ``key`` as given (from a
    deployment's Secret), or a random one. The caller commits."""
    if key is not None and (not key.startswith(KEY_PREFIX) or len(key) < len(KEY_PREFIX) + 32):
        raise InvalidRequest(
            f"An API key given to townsquare starts with '{KEY_PREFIX}' and has at least 32 "
            'more characters, e.g. "ts_$(openssl rand -hex 24)".'
        )
    key = key or KEY_PREFIX + secrets.token_urlsafe(32)
    db.add(ApiKey(user_id=user.id, prefix=key[:10], key_hash=_digest(key), label=label))
    return key


def revoke_key(db: Session, key: str) -> None:
    """Revoke one API key (known by its secret). The caller commits."""
    row = db.scalar(select(ApiKey).where(ApiKey.key_hash == _digest(key)))
    if row is not None and row.revoked_at is None:
        row.revoked_at = datetime.now(UTC)


def key_row(db: Session, key: str) -> ApiKey | None:
    """The live (not revoked) key row of an active user for ``key``, or None."""
    if not key.startswith(KEY_PREFIX):
        return None
    row = db.scalar(
        select(ApiKey).where(ApiKey.key_hash == _digest(key), ApiKey.revoked_at.is_(None))
    )
    if row is None or row.user.disabled:
        return None
    return row


def user_for_key(db: Session, key: str) -> User | None:
    """The active user owning ``key``, or None."""
    row = key_row(db, key)
    return None if row is None else row.user


def count_users(db: Session) -> int:
    """How many users exist."""
    return db.scalar(select(func.count()).select_from(User)) or 0


def find_user(db: Session, name: str) -> User | None:
    """The user with this name, or None."""
    return db.scalar(select(User).where(User.name == name))


def start_web_session(db: Session, key: ApiKey, *, days: int) -> str:
    """Create a browser session opened with ``key`` and return its token (for the cookie):
    the session lives only as long as the key does. The caller commits."""
    token = secrets.token_urlsafe(32)
    db.add(
        WebSession(
            user_id=key.user_id,
            token_hash=_digest(token),
            expires_at=datetime.now(UTC) + timedelta(days=days),
            api_key_id=key.id,
        )
    )
    return token


def user_for_session(db: Session, token: str) -> User | None:
    """The user behind a live web session token, or None: expired, unknown, opened before
    sessions were tied to keys, or opened with a key that has since been revoked (checked on
    every request, so a revocation ends the session on every replica at once)."""
    row = db.scalar(select(WebSession).where(WebSession.token_hash == _digest(token)))
    if row is None or _as_utc(row.expires_at) < datetime.now(UTC) or row.api_key_id is None:
        return None
    key = db.get(ApiKey, row.api_key_id)
    if key is None or key.revoked_at is not None:
        return None
    user = db.get(User, row.user_id)
    return None if user is None or user.disabled else user


def csrf_token(session_token: str) -> str:
    """The CSRF token of a web session: a keyed hash of the session token, so it needs no
    storage, differs per session, and cannot be worked out without the (HttpOnly) cookie."""
    return hmac.new(session_token.encode(), b"townsquare-csrf", hashlib.sha256).hexdigest()


def csrf_matches(session_token: str, sent: str | None) -> bool:
    """Whether ``sent`` is the session's CSRF token (compared in constant time)."""
    return bool(sent) and hmac.compare_digest(csrf_token(session_token), str(sent))


def end_web_session(db: Session, token: str) -> None:
    """Delete a web session (log out); unknown tokens are ignored."""
    row = db.scalar(select(WebSession).where(WebSession.token_hash == _digest(token)))
    if row is not None:
        db.delete(row)

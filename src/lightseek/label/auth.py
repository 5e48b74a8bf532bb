"""LabelHub's users, passwords, sessions and roles.

Passwords are hashed with argon2id (argon2-cffi, its default parameters; a hash made with older
parameters is re-hashed at the next login). A session is a random token in an HttpOnly,
SameSite=Lax cookie; the database keeps only the token's SHA-256, with the session's CSRF token,
which every state-changing request sends back (a form field or the X-CSRF-Token header).

Roles: ``admin`` (users, roles, projects, members, imports, exports, everything), ``reviewer``
(annotates, reviews and exports the projects they are a member of), ``annotator`` (annotates the
projects they are a member of, and sees only their own work).
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time

import sqlalchemy as sa

from lightseek.errors import ConfigError
from lightseek.label import tables as t
from lightseek.label.tasks import LabelError, NotFound

ROLES = ("admin", "reviewer", "annotator")
SESSION_SECONDS = 12 * 3600
MIN_PASSWORD = 8
USERNAME = re.compile(r"^[\w.@+-]{2,80}$")


class AuthError(LabelError):
    """Not signed in (401) or not allowed (403)."""

    def __init__(self, message: str, status: int = 403):
        super().__init__(message)
        self.status = status


def _hasher():
    try:
        from argon2 import PasswordHasher
    except ImportError:
        raise ConfigError("LabelHub hashes passwords with argon2-cffi: pip install 'lightseek[label]'") from None
    return PasswordHasher()


def hash_password(password: str) -> str:
    if not isinstance(password, str) or len(password) < MIN_PASSWORD:
        raise LabelError(f"password: at least {MIN_PASSWORD} characters")
    return _hasher().hash(password)


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Users:
    """Users and sessions on one engine."""

    def __init__(self, engine):
        self.engine = engine
        self._ph = _hasher()
        self._dummy = self._ph.hash(secrets.token_hex(8))  # verified when the user is unknown: same time

    def add(self, username: str, password: str, role: str = "annotator") -> int:
        if not isinstance(username, str) or not USERNAME.match(username):
            raise LabelError(f"username {username!r}: 2-80 letters, digits or . @ + - _")
        if role not in ROLES:
            raise LabelError(f"role {role!r}: choose one of {', '.join(ROLES)}")
        hashed = hash_password(password)
        with self.engine.begin() as c:
            if c.execute(sa.select(t.users.c.id).where(t.users.c.username == username)).first():
                raise LabelError(f"username {username!r} is taken")
            return c.execute(t.users.insert().values(username=username, password_hash=hashed, role=role,
                                                     active=True, created_at=int(time.time()))).inserted_primary_key[0]

    def get(self, user_id: int) -> dict | None:
        with self.engine.connect() as c:
            row = c.execute(sa.select(t.users).where(t.users.c.id == user_id)).mappings().first()
        return _public(row) if row else None

    def by_name(self, username: str) -> dict | None:
        with self.engine.connect() as c:
            row = c.execute(sa.select(t.users).where(t.users.c.username == username)).mappings().first()
        return _public(row) if row else None

    def list(self) -> list[dict]:
        with self.engine.connect() as c:
            return [_public(r) for r in c.execute(sa.select(t.users).order_by(t.users.c.id)).mappings()]

    def update(self, user_id: int, role: str | None = None, active: bool | None = None,
               password: str | None = None) -> dict:
        values: dict = {}
        if role is not None:
            if role not in ROLES:
                raise LabelError(f"role {role!r}: choose one of {', '.join(ROLES)}")
            values["role"] = role
        if active is not None:
            if not isinstance(active, bool):
                raise LabelError(f"active {active!r}: true or false")
            values["active"] = active
        if password is not None:
            values["password_hash"] = hash_password(password)
        if not values:
            raise LabelError("give role, active or password")
        from lightseek.label.store import release_open

        with self.engine.begin() as c:
            if not c.execute(t.users.update().where(t.users.c.id == user_id).values(**values)).rowcount:
                raise NotFound(f"no user {user_id}")
            admins = c.execute(sa.select(sa.func.count()).select_from(t.users).where(
                t.users.c.role == "admin", t.users.c.active.is_(True))).scalar()
            if not admins:  # rolled back with the transaction
                raise LabelError("that would leave no active admin")
            if values.get("active") is False or "password_hash" in values:  # their sessions end
                c.execute(t.sessions.delete().where(t.sessions.c.user_id == user_id))
            if values.get("active") is False:  # items waiting for their answer go to someone else
                release_open(c, user_id)
        return self.get(user_id)

    def check_password(self, username: str, password: str) -> dict | None:
        """The user when the password is theirs and they are active, else None (taking the same
        time whether or not the name exists)."""
        from argon2.exceptions import VerificationError

        with self.engine.connect() as c:
            row = c.execute(sa.select(t.users).where(t.users.c.username == username)).mappings().first()
        try:
            self._ph.verify(row["password_hash"] if row else self._dummy, password or "")
        except VerificationError:
            return None
        if not row or not row["active"]:
            return None
        if self._ph.check_needs_rehash(row["password_hash"]):
            with self.engine.begin() as c:
                c.execute(t.users.update().where(t.users.c.id == row["id"])
                          .values(password_hash=self._ph.hash(password)))
        return _public(row)

    def start_session(self, user_id: int) -> tuple[str, str]:
        """(cookie token, CSRF token) of a new session."""
        token, csrf, now = secrets.token_urlsafe(32), secrets.token_urlsafe(24), int(time.time())
        with self.engine.begin() as c:
            c.execute(t.sessions.delete().where(t.sessions.c.expires_at < now))
            c.execute(t.sessions.insert().values(token_hash=_token_hash(token), user_id=user_id, csrf=csrf,
                                                 created_at=now, expires_at=now + SESSION_SECONDS))
        return token, csrf

    def session(self, token: str | None) -> dict | None:
        """The signed-in user (with the session's ``csrf``) of a cookie token, or None."""
        if not token:
            return None
        q = (sa.select(t.users, t.sessions.c.csrf, t.sessions.c.expires_at)
             .join(t.sessions, t.sessions.c.user_id == t.users.c.id)
             .where(t.sessions.c.token_hash == _token_hash(token)))
        with self.engine.connect() as c:
            row = c.execute(q).mappings().first()
        if not row or row["expires_at"] < time.time() or not row["active"]:
            return None
        return {**_public(row), "csrf": row["csrf"]}

    def end_session(self, token: str | None) -> None:
        if token:
            with self.engine.begin() as c:
                c.execute(t.sessions.delete().where(t.sessions.c.token_hash == _token_hash(token)))


def _public(row) -> dict:
    return {"id": row["id"], "username": row["username"], "role": row["role"], "active": bool(row["active"]),
            "created_at": row["created_at"]}


def check_csrf(user: dict, sent: str | None) -> None:
    if not sent or not secrets.compare_digest(sent, user["csrf"]):
        raise AuthError("missing or wrong CSRF token (reload the page)", 403)


def require_role(user: dict, *roles: str) -> None:
    if user["role"] not in roles:
        raise AuthError(f"this needs the {' or '.join(roles)} role (you are {user['role']})", 403)

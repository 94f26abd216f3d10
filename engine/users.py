"""Users: creation with hashed passwords, roles, verification and account assignment.

Roles are agent < supervisor < admin (``engine.store.models.Role``); ``is_admin`` is kept
equal to ``role == admin`` for older callers. Agents see only the accounts assigned to them
(``user_accounts``), see ``engine.queues``.
"""

from __future__ import annotations

import secrets

from sqlalchemy import delete, select
from sqlalchemy.orm import Session
from werkzeug.security import check_password_hash, generate_password_hash

from engine.store.models import Account, QueueAccess, Role, User, UserAccount


def generate_password() -> str:
    """A strong password an admin can type: 20 URL-safe characters."""
    return secrets.token_urlsafe(15)


def create_user(session: Session, username: str, password: str, *, is_admin: bool = False,
                role: str | None = None) -> User:
    """Add a user; the password is stored only as a salted scrypt hash."""
    role = Role(role or (Role.ADMIN if is_admin else Role.AGENT)).value
    if session.scalar(select(User.id).where(User.username == username)) is not None:
        raise ValueError(f"user {username!r} already exists")
    user = User(username=username, password_hash=generate_password_hash(password),
                is_admin=role == Role.ADMIN, role=role, display_name=username)
    session.add(user)
    session.flush()
    return user


def verify_password(user: User, password: str) -> bool:
    return user.active and check_password_hash(user.password_hash, password)


def get_user(session: Session, username: str) -> User:
    user = session.scalar(select(User).where(User.username == username))
    if user is None:
        raise ValueError(f"no user {username!r}")
    return user


def set_password(session: Session, username: str, password: str) -> None:
    """Replace the password; the console's sessions of that user end (they carry a digest)."""
    get_user(session, username).password_hash = generate_password_hash(password)


def set_role(session: Session, username: str, role: str) -> None:
    user = get_user(session, username)
    user.role = Role(role).value
    user.is_admin = user.role == Role.ADMIN


def account_ids(session: Session, names: list[str]) -> list[int]:
    found = dict(session.execute(select(Account.name, Account.id)
                                 .where(Account.name.in_(names))).all())
    missing = [n for n in names if n not in found]
    if missing:
        raise ValueError(f"no account named {', '.join(map(repr, missing))}")
    return [found[n] for n in names]


def assign_accounts(session: Session, username: str, names: list[str], *,
                    replace: bool = False) -> list[str]:
    """Let the user work these accounts (``replace``: only these); returns all of its own."""
    user = get_user(session, username)
    ids = account_ids(session, names)
    if replace:
        session.execute(delete(UserAccount).where(UserAccount.user_id == user.id))
    have = set(session.scalars(select(UserAccount.account_id)
                               .where(UserAccount.user_id == user.id)))
    session.add_all(UserAccount(user_id=user.id, account_id=a) for a in ids if a not in have)
    session.flush()
    return list(session.scalars(select(Account.name).join(
        UserAccount, UserAccount.account_id == Account.id)
        .where(UserAccount.user_id == user.id).order_by(Account.name)))


def set_queues(session: Session, username: str, account: str, classifications: list[str]) -> None:
    """Limit the user to these queues of ``account`` (none given: all of its queues)."""
    user = get_user(session, username)
    [account_id] = account_ids(session, [account])
    session.execute(delete(QueueAccess).where(QueueAccess.user_id == user.id,
                                              QueueAccess.account_id == account_id))
    session.add_all(QueueAccess(user_id=user.id, account_id=account_id, classification=c)
                    for c in dict.fromkeys(classifications))
    session.flush()

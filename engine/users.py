"""Users and groups (minimal for now): creation with hashed passwords and verification."""

from __future__ import annotations

import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session
from werkzeug.security import check_password_hash, generate_password_hash

from engine.store.models import User


def generate_password() -> str:
    """A strong password an admin can type: 20 URL-safe characters."""
    return secrets.token_urlsafe(15)


def create_user(session: Session, username: str, password: str, *, is_admin: bool = False) -> User:
    """Add a user; the password is stored only as a salted scrypt hash."""
    if session.scalar(select(User.id).where(User.username == username)) is not None:
        raise ValueError(f"user {username!r} already exists")
    user = User(username=username, password_hash=generate_password_hash(password),
                is_admin=is_admin, display_name=username)
    session.add(user)
    session.flush()
    return user


def verify_password(user: User, password: str) -> bool:
    return user.active and check_password_hash(user.password_hash, password)

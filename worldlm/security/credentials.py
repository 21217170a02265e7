"""Participants' Redis passwords, for runs with ``isolation = "acl"``.

``<dir>/<id>.redis`` holds one participant's password (mode 0600), in the key directory next
to its signing key; ``WORLDLM_REDIS_PASSWORD`` replaces the file for a process that runs one
participant (a container). Passwords never go in the config. A participant logs in to Redis
as ``<run>.<id>`` (:func:`worldlm.security.acl.principal`) with the password put into its Redis URL;
:func:`apply_redis_users` gives each its Redis user (an operator's, or the runner's, step).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote, urlsplit, urlunsplit

from brokers.access import server_version, set_users
from worldlm.security.acl import grants, principals, redis_rules
from worldlm.security.keys import KeyFileError

if TYPE_CHECKING:
    from worldlm.config.hierarchy import Hierarchy

#: Overrides the password file of the one participant a process runs.
PASSWORD_ENV = "WORLDLM_REDIS_PASSWORD"


def password_path(directory: str | Path, owner: str) -> Path:
    return Path(directory) / f"{owner}.redis"


def generate_passwords(
    directory: str | Path, owners: Iterable[str], *, overwrite: bool = False
) -> list[str]:
    """Write a random password per owner into ``directory``; return the owners given one.

    Existing passwords are kept unless ``overwrite`` (a new one locks its owner out until the
    ACLs are applied again).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    created = []
    for owner in owners:
        path = password_path(directory, owner)
        if path.exists() and not overwrite:
            continue
        path.unlink(missing_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(32) + "\n")
        created.append(owner)
    return created


def read_password(directory: str | Path, owner: str) -> str:
    """``owner``'s password from its file in ``directory``."""
    path = password_path(directory, owner)
    try:
        password = path.read_text().strip()
    except OSError as exc:
        raise KeyFileError(
            f"no Redis password for {owner!r}: cannot read {path} ({exc.strerror}); "
            "make one: worldlm keys generate"
        ) from exc
    if not password:
        raise KeyFileError(f"{path} is empty")
    return password


def load_password(directory: str | Path | None, owner: str) -> str:
    """The password ``owner`` logs in with: ``$WORLDLM_REDIS_PASSWORD``, else its file."""
    if password := os.environ.get(PASSWORD_ENV, ""):
        return password
    if directory is None:
        raise KeyFileError(
            f"this run isolates federations (isolation = 'acl'): give {owner} its key "
            f"directory (--keys DIR, holding {owner}.redis) or set {PASSWORD_ENV}"
        )
    return read_password(directory, owner)


def with_credentials(url: str, user: str, password: str) -> str:
    """``url`` logging in as ``user`` with ``password`` (any credentials in it replaced)."""
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    login = f"{quote(user, safe='')}:{quote(password, safe='')}@"
    return urlunsplit(parts._replace(netloc=login + host))


async def apply_redis_users(hierarchy: Hierarchy, admin_url: str, key_dir: str | None) -> int:
    """Give every principal of the run its Redis user, password from ``key_dir``; how many."""
    if key_dir is None:
        raise KeyFileError(
            f"run {hierarchy.run.id!r} isolates federations: give the key directory holding "
            "the participants' Redis passwords (--keys DIR; worldlm keys generate)"
        )
    passwords = {p: read_password(key_dir, p) for p in principals(hierarchy)}
    read_only = await server_version(admin_url) >= (7,)
    users = {
        g.principal: redis_rules(g, passwords[g.node], read_only=read_only)
        for g in grants(hierarchy)
    }
    await set_users(admin_url, users)
    return len(users)

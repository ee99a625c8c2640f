"""The unprivileged account a server runs as when the tests run as root.

PostgreSQL, PgBouncer and MariaDB each refuse to run as root.
"""

import pwd


def unprivileged_user(names):
    """Return the first of the accounts ``names`` (a pwd entry) this machine
    has, to run a server as."""
    for name in names:
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise RuntimeError(f"no unprivileged user ({' or '.join(names)}) to run a server")


def run_as(owner):
    """Return subprocess's keyword arguments that run a program as ``owner``
    (a pwd entry), or none to run it as this process's user."""
    if owner is None:
        return {}
    return {"user": owner.pw_uid, "group": owner.pw_gid, "extra_groups": []}

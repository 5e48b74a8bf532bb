"""A throw-away PostgreSQL server for a benchmark: a cluster of its own in a temporary folder
(initdb, pg_ctl; as the ``postgres`` user when run as root, since PostgreSQL refuses root), on a
free loopback port, stopped and removed afterwards. The platform tests' fixture
(tests/platform/databases.py) starts its server with it too.

    with temporary_cluster() as admin_url:         # postgresql://lightseek@127.0.0.1:PORT/postgres
        url = create_database(admin_url, "bench")   # postgresql://lightseek@127.0.0.1:PORT/bench
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class PgUnavailable(RuntimeError):
    """PostgreSQL cannot be started here (not installed, or root without a ``postgres`` user)."""


def pg_bindir() -> str | None:
    """The folder of initdb and pg_ctl: from PATH, else Debian's /usr/lib/postgresql/N/bin."""
    for tool in ("initdb", "pg_ctl"):
        found = shutil.which(tool)
        if found:
            return str(Path(os.path.realpath(found)).parent)
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return str(Path(found[-1]).parent) if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def temporary_cluster(options: dict[str, str] | None = None, prefix: str = "lightseek-bench-pg-") -> Iterator[str]:
    """Start a cluster (trust authentication for the user ``lightseek``, UTF-8; ``options`` are
    server settings, e.g. ``{"max_connections": "200"}``) and yield its admin URL; the server is
    stopped and its folder removed on the way out, whatever happened inside."""
    bindir = pg_bindir()
    if bindir is None or not Path(bindir, "initdb").exists():
        raise PgUnavailable("PostgreSQL is not installed (no initdb / pg_ctl; Debian: apt-get install postgresql)")
    root = Path(tempfile.mkdtemp(prefix=prefix))
    as_user: list[str] = []
    try:
        if os.geteuid() == 0:
            import pwd

            try:
                pw = pwd.getpwnam("postgres")
            except KeyError:
                raise PgUnavailable("running as root and there is no 'postgres' user to run PostgreSQL as") from None
            os.chown(root, pw.pw_uid, pw.pw_gid)
            as_user = ["runuser", "-u", "postgres", "--"]
        port, data = _free_port(), root / "data"
        settings = {"listen_addresses": "127.0.0.1", **(options or {})}
        flags = f"-p {port} -k {root} " + " ".join(f"-c {k}={v}" for k, v in settings.items())

        def run(*cmd: str) -> None:
            done = subprocess.run([*as_user, *cmd], capture_output=True, text=True)
            if done.returncode:
                log = root / "log"
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                raise RuntimeError(f"{' '.join(cmd)} failed: {done.stderr[-2000:]}{tail}")

        run(f"{bindir}/initdb", "-D", str(data), "-U", "lightseek", "--auth=trust", "-E", "UTF8")
        run(f"{bindir}/pg_ctl", "-D", str(data), "-l", str(root / "log"), "-w", "-o", flags, "start")
        try:
            yield f"postgresql://lightseek@127.0.0.1:{port}/postgres"
        finally:
            subprocess.run([*as_user, f"{bindir}/pg_ctl", "-D", str(data), "-m", "fast", "-w", "stop"],
                           capture_output=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def create_database(admin_url: str, name: str) -> str:
    """A new database ``name`` on the server of ``admin_url``; its URL."""
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    return admin_url.rsplit("/", 1)[0] + "/" + name


def server_version(url: str) -> str:
    import psycopg

    with psycopg.connect(url) as c:
        return c.execute("SHOW server_version").fetchone()[0]

"""Fixtures, loaded by tests/conftest.py as a plugin (a conftest.py here would shadow the root
one, which other tests import as `conftest`). Databases for the platform tests: a SQLite file,
and a real PostgreSQL server that the session starts in a folder of its own (initdb, pg_ctl; as
the postgres user when run as root) and removes afterwards.
``LIGHTSEEK_TEST_PG=postgresql://...`` uses a running server instead."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest


def _pg_bindir() -> str | None:
    ctl = shutil.which("pg_ctl")
    if ctl:
        return str(Path(os.path.realpath(ctl)).parent)
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return str(Path(found[-1]).parent) if found else None


@pytest.fixture(scope="session")
def pg_server():
    """A PostgreSQL server's admin URL (its 'postgres' database)."""
    if os.environ.get("LIGHTSEEK_TEST_PG"):
        yield os.environ["LIGHTSEEK_TEST_PG"]
        return
    pytest.importorskip("psycopg", reason="PostgreSQL needs psycopg (pip install -e .[platform])")
    bindir = _pg_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (Debian: apt-get install postgresql; .ci/run installs it)")
    root = Path(tempfile.mkdtemp(prefix="lightseek-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        import pwd

        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run PostgreSQL as")
        os.chown(root, pw.pw_uid, pw.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = root / "data"
    run = lambda *cmd: subprocess.run([*as_user, *cmd], check=True, capture_output=True, text=True)  # noqa: E731
    run(f"{bindir}/initdb", "-D", str(data), "-U", "lightseek", "--auth=trust", "-E", "UTF8")
    run(f"{bindir}/pg_ctl", "-D", str(data), "-l", str(root / "log"), "-w", "-o",
        f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200", "start")
    try:
        yield f"postgresql://lightseek@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, f"{bindir}/pg_ctl", "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def _fresh_pg_database(admin_url: str) -> tuple[str, callable]:
    import psycopg

    name = f"lightseek_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as c:
        c.execute(f"CREATE DATABASE {name}")

    def drop():
        with psycopg.connect(admin_url, autocommit=True) as c:
            c.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    return admin_url.rsplit("/", 1)[0] + "/" + name, drop


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """A new, empty database: a SQLite file, then a PostgreSQL database."""
    pytest.importorskip("sqlalchemy", reason="the platform needs SQLAlchemy (pip install -e .[platform])")
    pytest.importorskip("alembic", reason="the platform needs Alembic (pip install -e .[platform])")
    if request.param == "sqlite":
        yield str(tmp_path / "platform.db")
        return
    url, drop = _fresh_pg_database(request.getfixturevalue("pg_server"))
    yield url
    drop()


@pytest.fixture
def secret(monkeypatch):
    monkeypatch.setenv("LIGHTSEEK_PLATFORM_SECRET", "test-secret-" + uuid.uuid4().hex)
    return os.environ["LIGHTSEEK_PLATFORM_SECRET"]

"""Fixtures, loaded by tests/conftest.py as a plugin (a conftest.py here would shadow the root
one, which other tests import as `conftest`). Databases for the platform tests: a SQLite file,
and a real PostgreSQL server that the session starts in a folder of its own (initdb, pg_ctl; as
the postgres user when run as root) and removes afterwards.
``LIGHTSEEK_TEST_PG=postgresql://...`` uses a running server instead."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import uuid
from pathlib import Path

import pytest


def _pg_cluster():
    """bench/pg_cluster.py, loaded by path (bench/ stays off sys.path): the one recipe for a
    throw-away PostgreSQL server, shared with the benchmarks."""
    spec = importlib.util.spec_from_file_location("lightseek_bench_pg_cluster",
                                                  Path(__file__).resolve().parents[2] / "bench" / "pg_cluster.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def pg_server():
    """A PostgreSQL server's admin URL (its 'postgres' database)."""
    if os.environ.get("LIGHTSEEK_TEST_PG"):
        yield os.environ["LIGHTSEEK_TEST_PG"]
        return
    pytest.importorskip("psycopg", reason="PostgreSQL needs psycopg (pip install -e .[platform])")
    pg = _pg_cluster()
    with contextlib.ExitStack() as stack:
        try:
            url = stack.enter_context(pg.temporary_cluster({"fsync": "off", "max_connections": "200"},
                                                           prefix="lightseek-pg-"))
        except pg.PgUnavailable as e:
            pytest.skip(f"{e} (.ci/run installs PostgreSQL)")
        yield url


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

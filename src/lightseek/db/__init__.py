"""The database layer that platform/ (and later label/) share: one SQLAlchemy engine per URL and
the schema kept by Alembic migrations.

SQLite is the embedded default (one file, nothing to install): WAL journal, a 30 s busy timeout,
and every transaction begins IMMEDIATE, so writers queue for the lock instead of failing when a
read turns into a write. PostgreSQL is reached by URL (``postgresql://...``, driven by psycopg 3)
when more than one server process shares the data.
"""

from __future__ import annotations

from pathlib import Path

from lightseek.errors import ConfigError

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def _need():
    try:
        import alembic  # noqa: F401
        import sqlalchemy
    except ImportError as e:
        raise ConfigError(f"the platform needs SQLAlchemy and Alembic ({e.name} is missing): "
                          "pip install 'lightseek[platform]'") from None
    return sqlalchemy


def normalise_url(url: str | Path) -> str:
    """A database URL from what a user gives: a URL, or a file path meaning SQLite."""
    s = str(url)
    if "://" not in s:
        return f"sqlite:///{Path(s).expanduser().resolve()}"
    if s.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + s.split("://", 1)[1]
    if not s.startswith(("sqlite", "postgresql+")):
        raise ConfigError(f"database URL {s!r}: use a SQLite file path or a postgresql:// URL")
    return s


def connect(url: str | Path):
    """An SQLAlchemy engine for ``url`` (see `normalise_url`), with the SQLite settings above."""
    sa = _need()
    url = normalise_url(url)
    if url.startswith("sqlite"):
        path = url.split("///", 1)[1] if "///" in url else ""
        if path and path != ":memory:" and not Path(path).parent.is_dir():
            raise ConfigError(f"database {path}: its folder does not exist")
        engine = sa.create_engine(url, connect_args={"timeout": 30, "check_same_thread": False,
                                                     "isolation_level": None})

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record):
            cur = dbapi_conn.cursor()
            for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "foreign_keys=ON", "busy_timeout=30000"):
                cur.execute(f"PRAGMA {pragma}")
            cur.close()

        @sa.event.listens_for(engine, "begin")
        def _begin(conn):
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return _reachable(engine)
    try:
        engine = sa.create_engine(url, pool_size=16, max_overflow=16, pool_pre_ping=True)
    except ImportError as e:
        raise ConfigError(f"PostgreSQL needs psycopg ({e.name} is missing): pip install 'lightseek[platform]'") \
            from None
    return _reachable(engine)


def _reachable(engine):
    """``engine``, once one connection has opened: a file that cannot be opened or a server that
    does not answer (or refuses the login) is one line naming the database, not a driver traceback."""
    sa = _need()
    try:
        with engine.connect():
            pass
    except sa.exc.OperationalError as e:
        engine.dispose()
        reason = str(e.orig).strip().splitlines()[0] if e.orig is not None else str(e)
        raise ConfigError(f"cannot open database {engine.url.render_as_string(hide_password=True)}: {reason}") \
            from None
    return engine


def upgrade(engine, revision: str = "head") -> None:
    """Bring the schema to ``revision`` with the package's Alembic migrations."""
    _need()
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def current_revision(engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()

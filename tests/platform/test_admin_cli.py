"""`lightseek admin` end to end on a SQLite file: organisations, keys, prices, the market,
invoices, audit; and one-line errors for what a user gets wrong."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from types import SimpleNamespace

from lightseek.cli import main


def admin(capsys, db, *args, ok=True):
    """`lightseek admin ARGS --db DB` in this process (each run as a fresh process costs ~1 s of
    imports; `admin_process` below runs the installed entry point)."""
    capsys.readouterr()
    rc = main(["admin", *args, "--db", str(db)])
    out, err = capsys.readouterr()
    assert (rc == 0) == ok, err
    return SimpleNamespace(returncode=rc, stdout=out, stderr=err)


def admin_process(db, *args, ok=True):
    r = subprocess.run([sys.executable, "-m", "lightseek", "admin", *args, "--db", str(db)], capture_output=True,
                       text=True, timeout=120)
    assert (r.returncode == 0) == ok, r.stderr
    return r


def test_admin_cli(tmp_path, secret, capsys) -> None:
    db = tmp_path / "platform.db"
    admin_process(db, "init")
    admin(capsys, db, "org-create", "acme", "--plan", "pro", "--spend-limit", "100")
    admin(capsys, db, "org-create", "doctors")
    out = admin(capsys, db, "key-create", "acme", "--name", "ci", "--budget", "5.5", "--rpm", "60").stdout
    key = out.strip().splitlines()[-1]
    assert key.startswith("ls-") and len(key) > 40
    keys = json.loads(admin(capsys, db, "key-list", "acme").stdout)
    assert keys[0]["budget_micros"] == 5_500_000 and keys[0]["prefix"] == key[:11] and "key_hash" not in keys[0]
    assert key not in db.read_bytes().decode("latin-1")
    assert "rpm 6000" in admin(capsys, db, "org-limits", "acme", "--rpm", "6000", "--concurrency", "64").stdout
    orgs = {o["name"]: o for o in json.loads(admin(capsys, db, "org-list").stdout)}
    assert (orgs["acme"]["rpm"], orgs["acme"]["concurrency"], orgs["acme"]["spend_limit_micros"]) == (6000, 64, 10**8)
    admin(capsys, db, "price-set", "base", "--prompt", "0.001", "--completion", "0.003")
    admin(capsys, db, "publish", "med", "--author", "doctors", "--share", "70%")
    month = time.strftime("%Y-%m", time.gmtime())
    out = admin(capsys, db, "invoice", "acme", "--month", month, "--out", str(tmp_path)).stdout
    inv = json.loads((tmp_path / f"invoice-acme-{month}.json").read_text())
    assert inv["subscription_fee_micros"] == 20_000_000 and inv["total"] == "20.000000" and "20.000000" in out
    assert (tmp_path / f"invoice-acme-{month}.html").is_file()
    assert "running totals equal the ledger" in admin(capsys, db, "audit").stdout
    admin(capsys, db, "key-revoke", key[:11])
    for args, msg in ((("org-create", "acme"), "exists already"), (("org-create", "x", "--plan", "gold"), "gold"),
                      (("key-create", "nobody"), "no organisation named 'nobody'"),
                      (("key-create", "acme", "--budget", "1.0000001"), "at most 6 decimals"),
                      (("invoice", "acme", "--month", "2026-13"), "not a month"),
                      (("publish", "med", "--author", "doctors", "--share", "1.5"), "share")):
        err = admin(capsys, db, *args, ok=False).stderr
        assert msg in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    err = admin_process(db, "org-create", "acme", ok=False).stderr  # the same, from the entry point
    assert "exists already" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_a_database_that_cannot_be_opened_is_one_line(tmp_path, secret, capsys) -> None:
    """A folder given as the SQLite file, and a PostgreSQL server that does not answer: one line
    naming the database (the password hidden), not the driver's traceback."""
    err = admin(capsys, tmp_path, "init", ok=False).stderr
    assert err.strip() == f"lightseek admin init: error: cannot open database sqlite:///{tmp_path}: " \
                          "unable to open database file"
    err = admin(capsys, "postgresql://someone:hunter2@127.0.0.1:1/none", "org-list", ok=False).stderr
    assert "cannot open database postgresql+psycopg://someone:***@127.0.0.1:1/none" in err
    assert "hunter2" not in err and len(err.strip().splitlines()) == 1

"""LabelHub under load: 20 simulated annotators on a project of 100,000 items, on SQLite and on
PostgreSQL. Target: the p95 of the annotator's API routes (next item + annotate) under 200 ms on
each backend.

For each backend (a SQLite file in a temporary folder; a PostgreSQL cluster this script starts in
a temporary folder with initdb / pg_ctl and removes afterwards, skipped with a message where
PostgreSQL is not installed):

  setup    through the store, not the API (timed): one admin, the annotators and a reviewer
           (argon2 hashes), a classify project (medical / finance / legal / general, overlap 2,
           least-confidence order, disagreements to review), the items bulk-inserted
           (`add_items`), and a scored pre-label for every item in chunks (`add_prelabels`), so
           that least-confidence ordering sorts on real uncertainties
  server   `python -m lightseek label serve` in its own process on a free loopback port, its
           output to a file (a full pipe can stall a server), ready when GET /healthz answers
  clients  in another process of their own (no PyTorch, no lightseek: `requests` with one
           keep-alive session per thread), each annotator a thread: log in (POST /api/login, the
           CSRF token as X-CSRF-Token on every POST), then POST /api/projects/{p}/next, think
           (exponential, mean --think seconds), POST /api/items/{i}/annotations with a label that
           agrees with the pre-label 80% of the time, or (2%) POST /api/items/{i}/skip. A reviewer
           thread GETs /api/projects/{p}/review and /api/projects/{p}/stats every --review-every
           seconds from half-way through the warm-up (the first stats imports the agreement
           libraries in the server); those are reported per route, apart from the annotator figure.
  measure  after --warmup seconds, for --duration seconds: each route's latency (p50, p95, p99,
           max, as the client sees it), requests/s and errors (any status but 200, 201 and 204,
           and failed connections; examples kept); the annotator figure also over the requests
           that overlapped none of the reviewer's (what stats, CPU work in the server's one
           process, adds to it), and the server process's CPU seconds per second. Logins are
           timed apart.
  check    afterwards, in the database: no item has more annotations or claims than its overlap;
           claims and done counters equal the assignments and annotations behind them; every
           annotation is of an item assigned to its author; no annotator holds two open items;
           the annotations in the database are those the clients were told were recorded.

    python bench/label_load.py [--backends sqlite,postgresql] [--items 100000] [--annotators 20]
                               [--overlap 2] [--think 1.0] [--skip-share 0.02] [--agree 0.8]
                               [--duration 60] [--warmup 5] [--review-every 5] [--seed 0]
                               [--quick] [--keep] [--result NAME]

--quick is a smoke run (2,000 items, 4 annotators, 15 s). Writes bench/results/label_load.json
after each backend (``complete`` false until the last is done), with the run's provenance;
settings that change what is measured write label_load_<what differs>.json, --quick
label_load_quick.json, --result NAME bench/results/NAME.json. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pg_cluster import PgUnavailable, pg_bindir  # noqa: E402
from provenance import ROOT, provenance, result_name, write_result  # noqa: E402
from serve_load import free_port, launch, pct  # noqa: E402

LABELS = ("medical", "finance", "legal", "general")
WORDS = {
    "medical": "patient dose symptoms diagnosis blood pressure clinical treatment infection therapy chronic".split(),
    "finance": "interest rates bond yield equity portfolio inflation dividend credit liquidity market".split(),
    "legal": "court contract plaintiff statute liability appeal clause tribunal defendant ruling".split(),
    "general": "weather city music garden travel history festival recipe football village".split(),
}
ANNOTATOR_ROUTES = ("next", "annotate")
ROUTE_ORDER = ("next", "annotate", "skip", "review", "stats")
OK = (200, 201, 204)
TARGET_P95_MS = 200.0
PASSWORD = "bench-password-1"
PRELABEL_CHUNK = 5000
PG_SETTINGS = {"max_connections": "200"}  # the server's pool: 16 + 16 overflow
# what changes the measurement (result_name); --duration, --warmup, --review-every only set how long
DEFAULTS = {"items": 100_000, "annotators": 20, "think": 1.0, "overlap": 2, "skip_share": 0.02, "agree": 0.8,
            "backends": "sqlite,postgresql"}
QUICK = {**DEFAULTS, "items": 2000, "annotators": 4, "think": 0.5}
TIMES = {"duration": 60.0, "warmup": 5.0, "review_every": 5.0}
QUICK_TIMES = {"duration": 15.0, "warmup": 2.0, "review_every": 3.0}


# --- set-up (through the store) --------------------------------------------------------------------

def build(url: str, args, seed: int = 0) -> dict:
    """Users, the project, its items and their pre-labels in the database at ``url``; what was
    made and how long each part took."""
    from lightseek.label.store import open_label_store

    rng, timing = random.Random(seed), {}
    t0 = time.perf_counter()
    engine, users, store = open_label_store(url)
    timing["migrate_s"] = time.perf_counter() - t0
    try:
        t = time.perf_counter()
        admin = users.add("admin", PASSWORD, "admin")
        reviewer = users.add("reviewer", PASSWORD, "reviewer")
        names = [f"annotator{i:02d}" for i in range(args.annotators)]
        ids = [users.add(n, PASSWORD, "annotator") for n in names]
        pid = store.create_project("bench", "classify", {
            "labels": list(LABELS), "overlap": args.overlap, "order": "least_confidence", "review": "disagreement",
            "instructions": "the text's domain"}, admin)
        for uid in [reviewer, *ids]:
            store.add_member(pid, uid)
        timing["users_s"] = time.perf_counter() - t

        truth = [rng.choice(LABELS) for _ in range(args.items)]
        records = [{"text": f"{n}: " + " ".join(rng.choice(WORDS[lab]) for _ in range(24)), "origin": "bench",
                    "n": n} for n, lab in enumerate(truth)]
        t = time.perf_counter()
        store.add_items(pid, records, origin="bench")
        timing["items_s"] = time.perf_counter() - t
        del records

        import sqlalchemy as sa

        from lightseek.label import tables as tb

        with engine.connect() as c:
            item_ids = c.execute(sa.select(tb.items.c.id).where(tb.items.c.project_id == pid)
                                 .order_by(tb.items.c.id)).scalars().all()
        t = time.perf_counter()
        for i in range(0, len(item_ids), PRELABEL_CHUNK):
            rows = []
            for item_id, lab in zip(item_ids[i:i + PRELABEL_CHUNK], truth[i:i + PRELABEL_CHUNK]):
                said = lab if rng.random() < 0.85 else rng.choice(LABELS)
                rows.append({"item_id": item_id, "model": "bench-domains", "version": "1",
                             "value": {"labels": [said]}, "score": round(rng.uniform(0.3, 1.0), 4)})
            store.add_prelabels(pid, rows)
        timing["prelabels_s"] = time.perf_counter() - t
        timing["total_s"] = time.perf_counter() - t0
    finally:
        engine.dispose()
    return {"project_id": pid, "annotators": names, "reviewer": "reviewer", "items": len(item_ids),
            "timing": {k: round(v, 3) for k, v in timing.items()}}


# --- the clients (a process of their own) -------------------------------------------------------

class Client:
    """One user's keep-alive session: logs in, then times every request it sends."""

    def __init__(self, port: int, username: str, rec: Recorder):
        import requests

        self.base, self.username, self.rec = f"http://127.0.0.1:{port}", username, rec
        self.http = requests.Session()
        self.csrf = ""

    def login(self) -> bool:
        t0 = time.perf_counter()
        try:
            r = self.http.post(f"{self.base}/api/login", json={"username": self.username, "password": PASSWORD},
                               timeout=120)
        except Exception as e:  # noqa: BLE001 - counted and reported
            self.rec.add("login", t0, time.perf_counter() - t0, 0, f"{type(e).__name__}: {e}")
            return False
        self.rec.add("login", t0, time.perf_counter() - t0, r.status_code, r.text)
        if r.status_code != 200:
            return False
        self.csrf = r.json()["csrf"]
        return True

    def call(self, route: str, method: str, path: str, body=None):
        """(status, JSON or None); a failed connection is status 0."""
        t0 = time.perf_counter()
        try:
            if method == "GET":
                r = self.http.get(self.base + path, timeout=120)
            else:
                r = self.http.post(self.base + path, json=body, headers={"X-CSRF-Token": self.csrf}, timeout=120)
            status, text = r.status_code, r.text
        except Exception as e:  # noqa: BLE001 - counted and reported
            status, text = 0, f"{type(e).__name__}: {e}"
        self.rec.add(route, t0, time.perf_counter() - t0, status, text)
        if status in (200, 201):
            try:
                return status, json.loads(text)
            except ValueError:
                return status, None
        return status, None


class Recorder:
    """Every request's (route, start, seconds, status), shared by the threads."""

    def __init__(self):
        self.lock = threading.Lock()
        self.samples: list[tuple[str, float, float, int]] = []
        self.examples: list[dict] = []

    def add(self, route: str, start: float, seconds: float, status: int, text: str) -> None:
        with self.lock:
            self.samples.append((route, start, seconds, status))
            if status not in OK and len(self.examples) < 20:
                self.examples.append({"route": route, "status": status, "body": text[:300]})


def _signed_in(client: Client, start: threading.Barrier, state: dict) -> float | None:
    """Log in, wait for every client to be ready, and give the run's end (None: the login failed)."""
    ok = client.login()
    start.wait()
    return state["end"] if ok else None


def annotator(client: Client, spec: dict, rng: random.Random, start: threading.Barrier, state: dict) -> None:
    pid = spec["project_id"]
    if (end := _signed_in(client, start, state)) is None:
        return
    while time.perf_counter() < end:
        status, item = client.call("next", "POST", f"/api/projects/{pid}/next")
        if status == 204 or item is None:  # nothing left for this annotator, or an error: wait and ask again
            time.sleep(1.0)
            continue
        think = rng.expovariate(1 / spec["think"]) if spec["think"] > 0 else 0.0
        time.sleep(min(think, max(0.0, end - time.perf_counter())))
        if time.perf_counter() >= end:
            break
        if rng.random() < spec["skip_share"]:
            client.call("skip", "POST", f"/api/items/{item['id']}/skip")
            continue
        pre = item["prelabels"][0] if item.get("prelabels") else None
        said = pre["value"]["labels"][0] if pre else rng.choice(LABELS)
        label = said if rng.random() < spec["agree"] else rng.choice([x for x in LABELS if x != said])
        status, _ = client.call("annotate", "POST", f"/api/items/{item['id']}/annotations",
                                {"value": {"labels": [label]}, "prelabel_id": pre["id"] if pre else None,
                                 "seconds": round(think, 3)})
        if status == 201:
            with client.rec.lock:
                state["annotated"] += 1


def reviewer(client: Client, spec: dict, start: threading.Barrier, state: dict) -> None:
    """The first round half-way through the warm-up, once there are annotations: the first stats
    with annotations imports the agreement libraries (scikit-learn, statsmodels) in the server,
    a cold start that belongs to the warm-up."""
    pid = spec["project_id"]
    if (end := _signed_in(client, start, state)) is None:
        return
    time.sleep(spec["warmup"] / 2)
    while time.perf_counter() < end:
        client.call("review", "GET", f"/api/projects/{pid}/review")
        if time.perf_counter() < end:
            client.call("stats", "GET", f"/api/projects/{pid}/stats")
        time.sleep(min(spec["review_every"], max(0.0, end - time.perf_counter())))


def run_clients(spec: dict) -> dict:
    """The annotators and the reviewer against a running server; raw samples of the measured window."""
    t_start = time.perf_counter()
    rec = Recorder()
    state = {"annotated": 0, "end": 0.0}
    window: dict = {}

    def go():  # the barrier's action: every user has logged in; the clock starts
        now = time.perf_counter()
        window["from"] = now + spec["warmup"]
        window["to"] = state["end"] = now + spec["warmup"] + spec["duration"]

    n = len(spec["annotators"])
    start = threading.Barrier(n + 1, action=go)
    threads = [threading.Thread(target=annotator, args=(Client(spec["port"], name, rec), spec,
                                                        random.Random(spec["seed"] * 1000 + i), start, state))
               for i, name in enumerate(spec["annotators"])]
    threads.append(threading.Thread(target=reviewer, args=(Client(spec["port"], spec["reviewer"], rec), spec,
                                                           start, state)))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lo, hi = window["from"], window["to"]
    samples = [s for s in rec.samples if s[0] == "login" or lo <= s[1] < hi]
    return {"samples": samples, "examples": rec.examples, "annotated_total": state["annotated"],
            "requests_total": len(rec.samples), "window_s": hi - lo, "run_s": time.perf_counter() - t_start}


def client_main(spec_path: str, out_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    Path(out_path).write_text(json.dumps(run_clients(spec)))


# --- figures ------------------------------------------------------------------------------------------

def summarise(raw: dict) -> dict:
    """Per route: requests, requests/s, latency percentiles (ms) and errors; and the annotator
    routes (next + annotate) together."""
    window = raw["window_s"]
    by: dict[str, list] = {}
    for route, _, seconds, status in raw["samples"]:
        by.setdefault(route, []).append((seconds, status))

    def figures(rows: list) -> dict:
        ms = [1000 * s for s, _ in rows]
        errors = sum(1 for _, st in rows if st not in OK)
        return {"requests": len(rows), "per_s": round(len(rows) / window, 2) if window else None,
                "p50_ms": round(pct(ms, 0.5), 2), "p95_ms": round(pct(ms, 0.95), 2),
                "p99_ms": round(pct(ms, 0.99), 2), "max_ms": round(max(ms), 2) if ms else None, "errors": errors,
                "no_content": sum(1 for _, st in rows if st == 204)}

    routes = {r: figures(by[r]) for r in (*ROUTE_ORDER, "login") if r in by}
    if "login" in routes:
        routes["login"]["per_s"] = None  # before the window
    both = [x for r in ANNOTATOR_ROUTES for x in by.get(r, [])]
    measured = [x for r, rows in by.items() if r != "login" for x in rows]
    # the annotator's requests that overlapped none of the reviewer's: what the reviewer's requests
    # (stats is CPU work in the server's one process) add to the annotator figure
    staff = [(t0, t0 + d) for route, t0, d, _ in raw["samples"] if route in ("review", "stats")]
    apart = [(d, st) for route, t0, d, st in raw["samples"] if route in ANNOTATOR_ROUTES
             and not any(t0 < hi and lo < t0 + d for lo, hi in staff)]
    return {"routes": routes, "annotator": figures(both) if both else None,
            "annotator_apart_from_reviewer": figures(apart) if apart else None,
            "requests_per_s": round(len(measured) / window, 2) if window else None,
            "errors": sum(r["errors"] for r in routes.values()),
            "error_examples": raw["examples"]}


def consistency(url: str, pid: int, overlap: int) -> dict:
    """Counts of what must be zero, and the totals they are out of."""
    import sqlalchemy as sa

    from lightseek.db import connect

    engine = connect(url)
    q = {
        "items_over_overlap": "SELECT COUNT(*) FROM (SELECT item_id FROM label_annotations WHERE project_id = :p "
                              "GROUP BY item_id HAVING COUNT(*) > :n) x",
        "claims_over_overlap": "SELECT COUNT(*) FROM label_items WHERE project_id = :p AND claims > :n",
        "claims_not_assignments": "SELECT COUNT(*) FROM label_items i WHERE i.project_id = :p AND i.claims <> "
                                  "(SELECT COUNT(*) FROM label_assignments a WHERE a.item_id = i.id "
                                  "AND a.state IN ('open', 'done'))",
        "done_not_annotations": "SELECT COUNT(*) FROM label_items i WHERE i.project_id = :p AND i.done <> "
                                "(SELECT COUNT(*) FROM label_annotations a WHERE a.item_id = i.id)",
        "annotations_not_assigned": "SELECT COUNT(*) FROM label_annotations an LEFT JOIN label_assignments a "
                                    "ON a.item_id = an.item_id AND a.user_id = an.user_id "
                                    "WHERE an.project_id = :p AND (a.item_id IS NULL OR a.state <> 'done')",
        "annotations_of_other_project": "SELECT COUNT(*) FROM label_annotations an JOIN label_items i "
                                        "ON i.id = an.item_id WHERE an.project_id <> i.project_id",
        "annotators_with_two_open": "SELECT COUNT(*) FROM (SELECT user_id FROM label_assignments "
                                    "WHERE project_id = :p AND state = 'open' GROUP BY user_id "
                                    "HAVING COUNT(*) > 1) x",
        "full_items_still_open": "SELECT COUNT(*) FROM label_items WHERE project_id = :p AND done >= :n "
                                 "AND status = 'open'",
    }
    totals = {
        "annotations": "SELECT COUNT(*) FROM label_annotations WHERE project_id = :p",
        "assignments": "SELECT COUNT(*) FROM label_assignments WHERE project_id = :p",
        "skipped": "SELECT COUNT(*) FROM label_assignments WHERE project_id = :p AND state = 'skipped'",
        "items_complete": "SELECT COUNT(*) FROM label_items WHERE project_id = :p AND status = 'complete'",
        "items_review": "SELECT COUNT(*) FROM label_items WHERE project_id = :p AND status = 'review'",
    }
    try:
        with engine.connect() as c:
            problems = {k: c.execute(sa.text(s), {"p": pid, "n": overlap}).scalar() for k, s in q.items()}
            counts = {k: c.execute(sa.text(s), {"p": pid}).scalar() for k, s in totals.items()}
    finally:
        engine.dispose()
    return {"problems": problems, "totals": counts}


# --- one backend --------------------------------------------------------------------------------------

def measure_backend(name: str, url: str, work: Path, args, times: dict) -> dict:
    print(f"[{name}] setting up {args.items:,} items, {args.annotators} annotators ...", flush=True)
    made = build(url, args)
    t = made["timing"]
    print(f"[{name}] setup {t['total_s']:.1f} s (schema {t['migrate_s']:.1f} s, users {t['users_s']:.1f} s, "
          f"items {t['items_s']:.1f} s, pre-labels {t['prelabels_s']:.1f} s)", flush=True)
    port = free_port()
    log_path = work / f"server-{name}.log"
    cmd = [sys.executable, "-m", "lightseek", "label", "serve", "--db", url, "--host", "127.0.0.1",
           "--port", str(port)]
    with open(log_path, "w+b") as log:
        t0 = time.perf_counter()
        server = launch(cmd, port, "/healthz", log=log)
        started = time.perf_counter() - t0
        try:
            spec = {"port": port, "project_id": made["project_id"], "annotators": made["annotators"],
                    "reviewer": made["reviewer"], "think": args.think, "skip_share": args.skip_share,
                    "agree": args.agree, "seed": args.seed, "review_every": times["review_every"],
                    "warmup": times["warmup"], "duration": times["duration"]}
            spec_path, out_path = work / f"clients-{name}.json", work / f"clients-{name}-out.json"
            spec_path.write_text(json.dumps(spec))
            print(f"[{name}] server up in {started:.1f} s; {args.annotators} annotators + 1 reviewer for "
                  f"{times['warmup']:g} + {times['duration']:g} s ...", flush=True)
            cpu0 = _cpu_seconds(server.pid)
            client = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--client", str(spec_path),
                                     str(out_path)], cwd=ROOT, capture_output=True, text=True,
                                    timeout=times["warmup"] + times["duration"] + 600)
            if client.returncode:
                raise RuntimeError(f"the client process failed: {client.stderr[-3000:]}")
            cpu = _cpu_seconds(server.pid) - cpu0 if cpu0 is not None else None
            raw = json.loads(out_path.read_text())
        finally:
            server.terminate()
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
    server_log = log_path.read_text(errors="replace")
    figures = summarise(raw)
    checked = consistency(url, made["project_id"], args.overlap)
    checked["annotated_by_clients"] = raw["annotated_total"]
    checked["problems"]["annotations_not_as_told"] = abs(checked["totals"]["annotations"] - raw["annotated_total"])
    a = figures["annotator"]
    out = {"setup": made["timing"], "items": made["items"], "server_start_s": round(started, 2),
           "window_s": round(raw["window_s"], 2), **figures,
           # the server process's CPU time (not PostgreSQL's) from the logins to the end, per second
           "server_cpu_per_s": round(cpu / raw["run_s"], 3) if cpu is not None else None, "consistency": checked,
           "consistent": not any(checked["problems"].values()),
           "annotator_p95_ms": a["p95_ms"] if a else None,
           "target_met": bool(a and a["requests"] and a["p95_ms"] < TARGET_P95_MS and a["errors"] == 0)}
    if figures["errors"] or "Traceback" in server_log:
        out["server_log_tail"] = server_log[-4000:]
    return out


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` so far (Linux /proc; None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_backend(name: str, args, times: dict, work: Path) -> dict:
    if name == "sqlite":
        folder = work / "sqlite"
        folder.mkdir()
        out = measure_backend(name, str(folder / "labelhub.db"), work, args, times)
        import sqlite3

        out["server_version"] = f"SQLite {sqlite3.sqlite_version}"
        out["server_settings"] = {"journal_mode": "WAL", "synchronous": "NORMAL", "transactions": "BEGIN IMMEDIATE",
                                  "busy_timeout_ms": 30000}  # as lightseek.db.connect sets them
        return out
    from pg_cluster import create_database, server_version, temporary_cluster

    with temporary_cluster(PG_SETTINGS) as admin:
        url = create_database(admin, "labelbench")
        out = measure_backend(name, url, work, args, times)
        out["server_version"] = f"PostgreSQL {server_version(url)}"
        out["server_settings"] = {**PG_SETTINGS, "others": "initdb's defaults (fsync, synchronous_commit on)"}
    return out


# --- report -------------------------------------------------------------------------------------------

def table(data: dict) -> str:
    lines = ["| backend | route | requests | req/s | p50 ms | p95 ms | p99 ms | max ms | errors |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, b in data["backends"].items():
        rows = [(r, b["routes"][r]) for r in ROUTE_ORDER if r in b["routes"]]
        if b["annotator"]:
            rows.insert(2, ("**next + annotate**", b["annotator"]))
        for route, f in rows:
            lines.append(f"| {name} | {route} | {f['requests']} | {f['per_s']:.1f} | {f['p50_ms']:.1f} | "
                         f"{f['p95_ms']:.1f} | {f['p99_ms']:.1f} | {f['max_ms']:.1f} | {f['errors']} |")
    out = "\n".join(lines) + "\n"
    for name, b in data["backends"].items():
        s, c = b["setup"], b["consistency"]
        bad = {k: v for k, v in c["problems"].items() if v}
        apart = b.get("annotator_apart_from_reviewer") or {}
        out += (f"\n{name} ({b['server_version']}): annotator p95 {b['annotator_p95_ms']} ms, target < "
                f"{TARGET_P95_MS:g} ms {'met' if b['target_met'] else 'NOT MET'} ({apart.get('p95_ms')} ms over the "
                f"{apart.get('requests')} requests that overlapped none of the reviewer's); "
                f"{b['requests_per_s']} requests/s; server process CPU {b['server_cpu_per_s']} s/s; "
                f"{b['errors']} errors; setup of {b['items']:,} items {s['total_s']:.1f} s "
                f"(items {s['items_s']:.1f} s, pre-labels {s['prelabels_s']:.1f} s); "
                f"{c['totals']['annotations']} annotations, {c['totals']['skipped']} skips; consistency "
                f"{'clean' if not bad else 'PROBLEMS ' + json.dumps(bad)}")
    for name, why in data.get("skipped", {}).items():
        out += f"\n{name}: skipped ({why})"
    return out + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backends", help="comma-separated: sqlite, postgresql (default both)")
    ap.add_argument("--items", type=int, help="items in the project (default 100000)")
    ap.add_argument("--annotators", type=int, help="simulated annotators (default 20)")
    ap.add_argument("--overlap", type=int, help="annotators per item (default 2)")
    ap.add_argument("--think", type=float, help="mean think time per item, seconds, exponential (default 1.0; "
                                                "0: none)")
    ap.add_argument("--skip-share", type=float, help="share of items skipped (default 0.02)")
    ap.add_argument("--agree", type=float, help="share of annotations agreeing with the pre-label (default 0.8)")
    ap.add_argument("--duration", type=float, help="measured seconds (default 60)")
    ap.add_argument("--warmup", type=float, help="seconds before the measured window (default 5)")
    ap.add_argument("--review-every", type=float, help="seconds between the reviewer's rounds (default 5)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="a smoke run: 2,000 items, 4 annotators, 15 s")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (SQLite file, server logs)")
    ap.add_argument("--result", help="write bench/results/RESULT.json")
    ap.add_argument("--client", nargs=2, metavar=("SPEC", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.client:
        client_main(*args.client)
        return
    defaults, times = (QUICK, QUICK_TIMES) if args.quick else (DEFAULTS, TIMES)
    for k, v in {**defaults, **times}.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if not backends or set(backends) - {"sqlite", "postgresql"}:
        ap.error(f"--backends {args.backends!r}: sqlite, postgresql or both")
    if args.items < 1 or args.annotators < 1 or not 1 <= args.overlap <= 20:
        ap.error("--items and --annotators at least 1, --overlap 1 to 20")
    stem = result_name("label_load_quick" if args.quick else "label_load", args, defaults)
    times = {k: getattr(args, k) for k in times}
    from importlib.metadata import version

    data = {**provenance(os.cpu_count()), "settings": {k: getattr(args, k) for k in (*defaults, *times, "seed")},
            "target": f"p95 of next + annotate < {TARGET_P95_MS:g} ms", "target_p95_ms": TARGET_P95_MS,
            "server_versions": {p: version(p) for p in ("fastapi", "uvicorn", "sqlalchemy", "psycopg", "requests")},
            "complete": False, "backends": {}, "skipped": {}}
    work = Path(tempfile.mkdtemp(prefix="lightseek-label-bench-"))
    try:
        for n, name in enumerate(backends, start=1):
            try:
                if name == "postgresql" and pg_bindir() is None:
                    raise PgUnavailable("PostgreSQL is not installed (no initdb / pg_ctl; Debian: "
                                        "apt-get install postgresql)")
                data["backends"][name] = b = run_backend(name, args, times, work)
                print(f"[{name}] annotator p95 {b['annotator_p95_ms']} ms "
                      f"({'met' if b['target_met'] else 'NOT met'}), {b['errors']} errors, consistency "
                      f"{'clean' if b['consistent'] else 'PROBLEMS'}", flush=True)
            except PgUnavailable as e:
                print(f"[{name}] skipped: {e}", flush=True)
                data["skipped"][name] = str(e)
            data["complete"] = n == len(backends)
            print(f"wrote {write_result(stem, data)}", flush=True)
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    if data["backends"]:
        print("\n" + table(data))


if __name__ == "__main__":
    main()

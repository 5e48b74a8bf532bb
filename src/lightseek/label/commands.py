"""`lightseek label ...`: LabelHub from the command line: the server, users, projects, imports,
pre-labels, exports and statistics, on the database ``--db`` names (a SQLite file, by default
``labelhub.db`` here, or a postgresql:// URL; or ``$LIGHTSEEK_LABEL_DB``)."""

from __future__ import annotations

import getpass
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

from lightseek.errors import ConfigError

DB_ENV = "LIGHTSEEK_LABEL_DB"
PASSWORD_ENV = "LIGHTSEEK_LABEL_PASSWORD"


def _open(args):
    from lightseek.label.store import open_label_store

    return open_label_store(args.db or os.environ.get(DB_ENV) or "labelhub.db")


def _password(args) -> str:
    """From $LIGHTSEEK_LABEL_PASSWORD (scripts), else asked twice on the terminal."""
    if os.environ.get(PASSWORD_ENV):
        return os.environ[PASSWORD_ENV]
    if not sys.stdin.isatty():
        raise ConfigError(f"give the password in ${PASSWORD_ENV} (no terminal to ask on)")
    first = getpass.getpass(f"password for {args.username}: ")
    if first != getpass.getpass("again: "):
        raise ConfigError("the two passwords differ")
    return first


def _print(obj) -> None:
    print(json.dumps(obj, indent=1, ensure_ascii=False, default=str))


def _user_id(users, name: str) -> int:
    u = users.by_name(name)
    if u is None:
        raise ConfigError(f"no user {name!r} (add one: lightseek label user-add {name})")
    return u["id"]


def cmd_label(args, overrides) -> int:
    from lightseek.label.tasks import LabelError

    try:
        return _run(args)
    except LabelError as e:
        raise ConfigError(str(e)) from None


def _run(args) -> int:
    a = args.sub
    if a == "serve":
        return _serve(args)
    engine, users, store = _open(args)
    if a == "init":
        print(f"LabelHub's schema is current on {engine.url.render_as_string(hide_password=True)}")
    elif a == "user-add":
        _print(users.get(users.add(args.username, _password(args), args.role)))
    elif a == "user-role":
        _print(users.update(_user_id(users, args.username), role=args.role))
    elif a == "users":
        _print(users.list())
    elif a == "project-create":
        cfg = {"overlap": args.overlap, "order": args.order, "review": args.review, "multi": args.multi,
               "instructions": args.instructions or ""}
        if args.labels:
            cfg["labels"] = [x.strip() for x in args.labels.split(",") if x.strip()]
        pid = store.create_project(args.name, args.task, cfg)
        _print({"id": pid, "name": args.name, "task": args.task})
    elif a == "member-add":
        p = store.project(args.project)
        for name in args.usernames:
            store.add_member(p["id"], _user_id(users, name))
        _print(store.members(p["id"]))
    elif a == "import":
        from lightseek.label.tasks import read_records

        p, path = store.project(args.project), Path(args.file)
        if not path.is_file():
            raise ConfigError(f"{path}: no such file")
        n = store.add_items(p["id"], list(read_records(path.name, path.read_bytes())), origin=path.name)
        print(f"{n} items imported into {p['name']!r} from {path}")
    elif a == "prelabel":
        from lightseek.label.prelabel import prelabel

        chosen = [(k, getattr(args, k)) for k in ("domains", "safety", "model") if getattr(args, k)]
        if len(chosen) != 1:
            raise ConfigError("give one of --domains CLASSIFIER, --safety CLASSIFIER, --model SPEC")
        prelabel(store, args.project, *chosen[0], limit=args.limit, max_tokens=args.max_tokens,
                 temperature=args.temperature)
    elif a == "export":
        from lightseek.label.export import export_records, write_export

        records = export_records(store, args.project, args.format, args.min_agreement)
        if args.out:
            write_export(records, args.out)
            print(f"{len(records)} records -> {args.out}", file=sys.stderr)
        else:
            for r in records:
                print(json.dumps(r, ensure_ascii=False))
    elif a == "stats":
        from lightseek.label.stats import project_stats

        _print(project_stats(store, store.project(args.project)["id"]))
    return 0


def _serve(args) -> int:
    try:
        import uvicorn
    except ImportError:
        raise ConfigError("LabelHub's server needs uvicorn: pip install 'lightseek[label]'") from None
    from lightseek.label.web import build_label_app
    from lightseek.sockets import bind_server_socket

    sock = bind_server_socket(args.host, args.port)  # before the database opens: a bad port fails now
    port = sock.getsockname()[1]  # --port 0: the one the system chose
    engine, users, store = _open(args)
    # the dashboards' statistics libraries, loaded now rather than inside the first request (one
    # missing says so at its first use, in agreement.py)
    import importlib

    for module in ("sklearn.metrics", "statsmodels.stats.inter_rater", "krippendorff"):
        try:
            importlib.import_module(module)
        except ImportError:
            pass

    if not any(u["role"] == "admin" and u["active"] for u in users.list()):
        print("no admin yet: add one with `lightseek label user-add NAME --role admin"
              + (f" --db {args.db}`" if args.db else "`"), file=sys.stderr)
    app = build_label_app(users, store, secure_cookies=args.secure_cookies)
    print(f"LabelHub on http://{args.host}:{port}/ ({engine.url.render_as_string(hide_password=True)})",
          file=sys.stderr)
    # idle connections stay open 30 s (uvicorn's default is 5): a page polled every few seconds
    # keeps its connection instead of racing the server's close
    uvicorn.Server(uvicorn.Config(app, host=args.host, port=port, log_level="warning",
                                  timeout_keep_alive=30)).run(sockets=[sock])
    return 0


def add_label_commands(sub, add: Callable) -> None:
    from lightseek.label.tasks import EXPORT_FORMATS as FORMATS
    from lightseek.label.tasks import ORDERS, REVIEWS, TASKS

    lab = sub.add_parser("label", help="LabelHub: the annotation web app (serve, users, projects, import, "
                                        "pre-label, export).").add_subparsers(dest="sub", metavar="SUB")

    def cmd(name: str, help_text: str):
        p = add(name, cmd_label, help_text, lab)
        p.add_argument("--db", help=f"a SQLite file or postgresql:// URL (default ${DB_ENV}, else ./labelhub.db)")
        return p

    p = cmd("serve", "Run the web app (pages and JSON API).")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8700)
    p.add_argument("--secure-cookies", action="store_true", help="session cookies only over HTTPS (behind TLS)")
    cmd("init", "Create or migrate the database.")
    p = cmd("user-add", f"Add a user (the password from ${PASSWORD_ENV}, else asked).")
    p.add_argument("username")
    p.add_argument("--role", default="annotator", choices=("admin", "reviewer", "annotator"))
    p = cmd("user-role", "Change a user's role.")
    p.add_argument("username")
    p.add_argument("role", choices=("admin", "reviewer", "annotator"))
    cmd("users", "List the users.")
    p = cmd("project-create", "Create a project.")
    p.add_argument("name")
    p.add_argument("--task", required=True, choices=TASKS)
    p.add_argument("--labels", help="comma-separated labels (classify, spans; safety defaults to S1-S13)")
    p.add_argument("--multi", action="store_true", help="classify: several labels per item")
    p.add_argument("--overlap", type=int, default=1, help="annotators per item")
    p.add_argument("--order", default="sequential", choices=ORDERS, help="which item comes next")
    p.add_argument("--review", default="disagreement", choices=REVIEWS, help="which items go to the review queue")
    p.add_argument("--instructions", help="shown to annotators")
    p = cmd("member-add", "Add users to a project.")
    p.add_argument("project")
    p.add_argument("usernames", nargs="+")
    p = cmd("import", "Import items from JSONL or CSV (the DataDistiller's data.jsonl keeps its provenance).")
    p.add_argument("project")
    p.add_argument("file")
    p = cmd("prelabel", "Pre-label open items with the project's own models.")
    p.add_argument("project")
    p.add_argument("--domains", metavar="CLASSIFIER", help="a domain classifier folder (classify projects)")
    p.add_argument("--safety", metavar="CLASSIFIER", help="a safety classifier folder (safety projects)")
    p.add_argument("--model", metavar="SPEC", help="a checkpoint, adapter or fetched model answering (qa projects)")
    p.add_argument("--limit", type=int, help="at most this many items")
    p.add_argument("--max-tokens", type=int, default=128, help="--model: tokens per answer at most")
    p.add_argument("--temperature", type=float, default=0.0, help="--model: sampling temperature (0: greedy)")
    p = cmd("export", "Export finished items as training data, with provenance.")
    p.add_argument("project")
    p.add_argument("--format", required=True, choices=list(FORMATS))
    p.add_argument("--min-agreement", type=float, help="keep items whose annotators agreed at least this much "
                                                      "(or that a reviewer decided)")
    p.add_argument("--out", help="JSONL file (default: stdout)")
    p = cmd("stats", "Progress, agreement and label distribution of a project (JSON).")
    p.add_argument("project")

"""LabelHub's HTTP side: a JSON API and server-rendered pages (Jinja2, a little JavaScript).

JSON API (a signed-in session's cookie; every POST/PUT/PATCH/DELETE also sends the session's CSRF
token as X-CSRF-Token):
  POST /api/login {username, password} -> {user, csrf}      POST /api/logout      GET /api/me
  GET  /api/users                 POST /api/users {username, password, role}          (admin)
  PATCH /api/users/{id} {role, active, password}                                      (admin)
  GET  /api/projects              POST /api/projects {name, task, config}             (create: admin)
  GET  /api/projects/{p}          PUT|DELETE /api/projects/{p}/members/{user_id}      (members: admin)
  POST /api/projects/{p}/items    (JSON list, or a JSONL/CSV upload as `file`)        (admin)
  GET  /api/projects/{p}/items?status=&offset=                                        (admin, reviewer)
  POST /api/projects/{p}/prelabels [{item_id, model, version, value, score}]           (admin)
  POST /api/projects/{p}/next     POST /api/items/{i}/annotations {value, prelabel_id, seconds}
  POST /api/items/{i}/skip        GET /api/projects/{p}/annotations (an annotator: their own)
  GET  /api/projects/{p}/review   POST /api/items/{i}/review {decision, value, note}  (admin, reviewer)
  GET  /api/projects/{p}/stats    GET /api/projects/{p}/export?format=&min_agreement= (admin, reviewer)

A project its caller is not a member of answers 404 (its existence is not revealed); a role that
may not do something answers 403; a value the task does not take, 422.
Pages: /login, / (projects), /projects/{p} (dashboard), /projects/{p}/annotate, /projects/{p}/review,
/users (admin).
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from urllib.parse import quote

from fastapi import Body, FastAPI, Form, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response

from lightseek.label import charts
from lightseek.label.auth import AuthError, Users, check_csrf, require_role
from lightseek.label.export import FORMATS, export_records
from lightseek.label.stats import project_stats
from lightseek.label.store import LabelStore
from lightseek.label.tasks import LabelError, NotFound, read_records

COOKIE = "labelhub_session"
LOGIN_COOKIE = "labelhub_login"
HERE = Path(__file__).resolve().parent
MAX_UPLOAD = 200 * 1024 * 1024
SAFE = {"GET", "HEAD", "OPTIONS"}


def build_label_app(users: Users, store: LabelStore, secure_cookies: bool = False) -> FastAPI:
    import jinja2

    app = FastAPI(title="LabelHub", docs_url="/api/docs", openapi_url="/api/openapi.json")
    pages = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True)

    @app.exception_handler(OverflowError)
    async def out_of_range(request: Request, e: Exception):  # an id past 64 bits, in a path or a query
        return JSONResponse({"error": {"message": "a number in the request is out of range", "status": 422}},
                            status_code=422)

    try:
        from sqlalchemy.exc import DataError

        app.add_exception_handler(DataError, out_of_range)  # PostgreSQL's numeric value out of range
    except ImportError:
        pass

    @app.exception_handler(LabelError)
    async def label_error(request: Request, e: LabelError):
        status = e.status if isinstance(e, AuthError) else 404 if isinstance(e, NotFound) else 422
        if status == 401 and not request.url.path.startswith("/api/"):
            return RedirectResponse("/login", status_code=303)
        if not request.url.path.startswith("/api/"):
            return HTMLResponse(_page(pages, "error.html", None, message=str(e)), status_code=status)
        return JSONResponse({"error": {"message": str(e), "status": status}}, status_code=status)

    def who(request: Request) -> dict:
        """The signed-in user; a state-changing request must carry the session's CSRF token."""
        user = users.session(request.cookies.get(COOKIE))
        if user is None:
            raise AuthError("sign in first (POST /api/login, or the /login page)", 401)
        if request.method not in SAFE:
            check_csrf(user, request.headers.get("x-csrf-token"))
        return user

    def staff(request: Request, ref) -> tuple[dict, dict]:
        user = who(request)
        p = store.visible_project(user, ref)
        require_role(user, "admin", "reviewer")
        return user, p

    # --- sign-in --------------------------------------------------------------------------

    def _signed_in(response: Response, user: dict) -> str:
        token, csrf = users.start_session(user["id"])
        response.set_cookie(COOKIE, token, httponly=True, samesite="lax", secure=secure_cookies,
                            max_age=12 * 3600)
        return csrf

    @app.post("/api/login")
    def api_login(response: Response, body: dict = Body(...)):
        user = users.check_password(str(body.get("username", "")), str(body.get("password", "")))
        if user is None:
            raise AuthError("wrong username or password", 401)
        return {"user": user, "csrf": _signed_in(response, user)}

    @app.post("/api/logout")
    def api_logout(request: Request):
        who(request)
        users.end_session(request.cookies.get(COOKIE))
        out = JSONResponse({"signed_out": True})
        out.delete_cookie(COOKIE)
        return out

    @app.get("/api/me")
    def me(request: Request):
        user = who(request)
        return {"user": {k: v for k, v in user.items() if k != "csrf"}, "csrf": user["csrf"]}

    # --- users (admin) --------------------------------------------------------------------

    @app.get("/api/users")
    def list_users(request: Request):
        require_role(who(request), "admin")
        return {"data": users.list()}

    @app.post("/api/users", status_code=201)
    def create_user(request: Request, body: dict = Body(...)):
        require_role(who(request), "admin")
        uid = users.add(body.get("username"), body.get("password"), body.get("role", "annotator"))
        return users.get(uid)

    @app.patch("/api/users/{user_id}")
    def update_user(request: Request, user_id: int, body: dict = Body(...)):
        require_role(who(request), "admin")
        unknown = set(body) - {"role", "active", "password"}
        if unknown:
            raise LabelError(f"unknown field(s): {', '.join(sorted(unknown))}")
        return users.update(user_id, body.get("role"), body.get("active"), body.get("password"))

    # --- projects -------------------------------------------------------------------------

    @app.get("/api/projects")
    def list_projects(request: Request):
        return {"data": [_project_json(p) for p in store.projects(who(request))]}

    @app.post("/api/projects", status_code=201)
    def create_project(request: Request, body: dict = Body(...)):
        user = who(request)
        require_role(user, "admin")
        pid = store.create_project(body.get("name"), body.get("task"), body.get("config"), user["id"])
        return _project_json(store.project(pid))

    @app.get("/api/projects/{ref}")
    def get_project(request: Request, ref: str):
        p = store.visible_project(who(request), ref)
        return {**_project_json(p), "members": store.members(p["id"])}

    @app.put("/api/projects/{ref}/members/{user_id}")
    def add_member(request: Request, ref: str, user_id: int):
        user = who(request)
        require_role(user, "admin")
        p = store.project(ref)
        store.add_member(p["id"], user_id)
        return {"members": store.members(p["id"])}

    @app.delete("/api/projects/{ref}/members/{user_id}")
    def remove_member(request: Request, ref: str, user_id: int):
        require_role(who(request), "admin")
        p = store.project(ref)
        store.remove_member(p["id"], user_id)
        return {"members": store.members(p["id"])}

    @app.post("/api/projects/{ref}/items", status_code=201)
    async def import_items(request: Request, ref: str):
        user = who(request)
        require_role(user, "admin")
        p = store.project(ref)
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            form = await request.form()
            upload = form.get("file")
            if not hasattr(upload, "read"):
                raise LabelError("file: upload a .jsonl or .csv file as the form field `file`")
            content = await upload.read()
            if len(content) > MAX_UPLOAD:
                raise LabelError(f"file: larger than {MAX_UPLOAD >> 20} MB")
            records, origin = read_records(upload.filename or "upload.jsonl", content), upload.filename
        else:
            try:
                records = await request.json()
            except ValueError:
                raise LabelError("send a JSON list of records, or a JSONL/CSV file as the form field `file`") \
                    from None
            if not isinstance(records, list):
                raise LabelError("send a JSON list of records")
            origin = "api"
        return {"imported": store.add_items(p["id"], list(records), origin=origin or "upload")}

    @app.get("/api/projects/{ref}/items")
    def list_items(request: Request, ref: str, status: str | None = None, offset: int = 0, limit: int = 50):
        _, p = staff(request, ref)
        return {"data": store.items(p["id"], status, max(offset, 0), max(1, limit))}

    @app.post("/api/projects/{ref}/prelabels", status_code=201)
    def add_prelabels(request: Request, ref: str, body: list = Body(...)):
        require_role(who(request), "admin")
        p = store.project(ref)
        if not all(isinstance(r, dict) and "item_id" in r and "value" in r for r in body):
            raise LabelError("send a list of {item_id, model, version, value, score}")
        return {"added": store.add_prelabels(p["id"], body)}

    # --- annotating -----------------------------------------------------------------------

    @app.post("/api/projects/{ref}/next")
    def next_item(request: Request, ref: str):
        user = who(request)
        p = store.visible_project(user, ref)
        item = store.next_item(p["id"], user)
        if item is None:
            return Response(status_code=204)
        mine = store.annotations(p["id"], user=user, item_id=item["id"])
        return {**_item_for(item, user), "task": p["task"], "mine": mine[0]["value"] if mine else None}

    def _item_project(user: dict, item_id: int) -> tuple[dict, dict]:
        """The item and its project, or 'no item' alike for a missing item and for one in a project
        the caller may not see (which project holds it is not revealed)."""
        try:
            item = store.item(item_id)
            return item, store.visible_project(user, item["project_id"])
        except NotFound:
            raise NotFound(f"no item {item_id}") from None

    @app.post("/api/items/{item_id}/annotations", status_code=201)
    def annotate(request: Request, item_id: int, body: dict = Body(...)):
        user = who(request)
        _item_project(user, item_id)
        value = store.annotate(item_id, user, body.get("value"), body.get("prelabel_id"), body.get("seconds"))
        return {"item_id": item_id, "value": value}

    @app.post("/api/items/{item_id}/skip")
    def skip(request: Request, item_id: int):
        user = who(request)
        _item_project(user, item_id)
        store.skip(item_id, user)
        return {"skipped": item_id}

    @app.get("/api/projects/{ref}/annotations")
    def list_annotations(request: Request, ref: str):
        user = who(request)
        p = store.visible_project(user, ref)
        own = user if user["role"] == "annotator" else None
        return {"data": store.annotations(p["id"], user=own)}

    # --- review, stats, export --------------------------------------------------------------

    @app.get("/api/projects/{ref}/review")
    def review_queue(request: Request, ref: str, limit: int = 50):
        _, p = staff(request, ref)
        return {"data": store.review_queue(p["id"], max(1, min(limit, 500)))}

    @app.post("/api/items/{item_id}/review")
    def review(request: Request, item_id: int, body: dict = Body(...)):
        user = who(request)
        _item_project(user, item_id)
        require_role(user, "admin", "reviewer")
        return store.review(item_id, user, body.get("decision"), body.get("value"), body.get("note"))

    @app.get("/api/projects/{ref}/stats")
    def stats(request: Request, ref: str):
        _, p = staff(request, ref)
        return project_stats(store, p["id"])

    @app.get("/api/projects/{ref}/export")
    def export(request: Request, ref: str, format: str, min_agreement: str | None = None):
        _, p = staff(request, ref)
        records = export_records(store, p["id"], format, _fraction("min_agreement", min_agreement))
        body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        return PlainTextResponse(body, media_type="application/x-ndjson", headers={
            "Content-Disposition": _attachment(f"{p['name']}-{format}.jsonl"), "X-Records": str(len(records))})

    # --- pages ----------------------------------------------------------------------------

    @app.get("/login", response_class=HTMLResponse)
    def login_page():
        return _login_page(pages)

    @app.post("/login")
    def login_form(request: Request, username: str = Form(""), password: str = Form(""),
                   login_csrf: str = Form("")):
        # the sign-in form's own CSRF check (double submit: the cookie set with the form must come
        # back in its field), so that another site cannot sign a visitor into its account
        sent = request.cookies.get(LOGIN_COOKIE)
        if not sent or not login_csrf or not secrets.compare_digest(sent, login_csrf):
            return _login_page(pages, "The sign-in form expired: try again.", 403)
        user = users.check_password(username, password)
        if user is None:
            return _login_page(pages, "Wrong username or password.", 401)
        out = RedirectResponse("/", status_code=303)
        _signed_in(out, user)
        return out

    @app.post("/logout")
    def logout_form(request: Request, csrf: str = Form("")):
        user = users.session(request.cookies.get(COOKIE))
        if user is not None:
            check_csrf(user, csrf)
            users.end_session(request.cookies.get(COOKIE))
        out = RedirectResponse("/login", status_code=303)
        out.delete_cookie(COOKIE)
        return out

    @app.get("/", response_class=HTMLResponse)
    def home(request: Request):
        user = who(request)
        rows = [{**_project_json(p), "stats": store.progress(p["id"]) if user["role"] != "annotator"
                 else None} for p in store.projects(user)]
        return _page(pages, "projects.html", user, projects=rows)

    @app.get("/projects/{ref}", response_class=HTMLResponse)
    def dashboard(request: Request, ref: str):
        user = who(request)
        p = store.visible_project(user, ref)
        s = project_stats(store, p["id"]) if user["role"] != "annotator" else None
        figs = charts.dashboard(s) if s else {}
        mine = len(store.annotations(p["id"], user=user))
        return _page(pages, "project.html", user, project=_project_json(p), stats=s, charts=figs, mine=mine,
                     formats=[f for f, ts in FORMATS.items() if p["task"] in ts],
                     members=store.members(p["id"]), all_users=users.list() if user["role"] == "admin" else [])

    @app.get("/projects/{ref}/annotate", response_class=HTMLResponse)
    def annotate_page(request: Request, ref: str):
        user = who(request)
        p = store.visible_project(user, ref)
        return _page(pages, "annotate.html", user, project=_project_json(p), category_names=_category_names(p))

    @app.get("/projects/{ref}/review", response_class=HTMLResponse)
    def review_page(request: Request, ref: str):
        user, p = staff(request, ref)
        return _page(pages, "review.html", user, project=_project_json(p), queue=store.review_queue(p["id"]),
                     category_names=_category_names(p))

    @app.get("/users", response_class=HTMLResponse)
    def users_page(request: Request):
        user = who(request)
        require_role(user, "admin")
        return _page(pages, "users.html", user, users=users.list())

    @app.get("/static/label.js")
    def script():
        return Response((HERE / "templates" / "label.js").read_text(encoding="utf-8"),
                        media_type="text/javascript")

    @app.get("/healthz")
    def healthz():
        return {"ok": True}

    return app


def _login_page(pages, error: str | None = None, status: int = 200) -> HTMLResponse:
    token = secrets.token_urlsafe(16)
    out = HTMLResponse(_page(pages, "login.html", None, error=error, login_csrf=token), status_code=status)
    out.set_cookie(LOGIN_COOKIE, token, httponly=True, samesite="strict", max_age=3600)
    return out


def _page(pages, name: str, user: dict | None, **context) -> str:
    return pages.get_template(name).render(user=user, **context)


def _fraction(name: str, raw: str | None) -> float | None:
    """A number from a query string; blank (the dashboard's export form leaves it so) is none."""
    if raw is None or not raw.strip():
        return None
    try:
        return float(raw)
    except ValueError:
        raise LabelError(f"{name} {raw!r}: a number between 0 and 1") from None


def _attachment(filename: str) -> str:
    """A Content-Disposition for any project name: headers are Latin-1, so a name in Chinese (or
    with a quote) goes as RFC 5987 UTF-8, with an ASCII fallback for old clients."""
    fallback = "".join(c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in filename)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


def _project_json(p: dict) -> dict:
    from dataclasses import asdict

    return {"id": p["id"], "name": p["name"], "task": p["task"], "config": asdict(p["config"]),
            "created_at": p["created_at"]}


def _item_for(item: dict, user: dict) -> dict:
    """An item as an annotator sees it: its content and the models' pre-labels; provenance and
    counters only for staff."""
    out = {"id": item["id"], "data": item["data"], "prelabels": item["prelabels"]}
    if user["role"] != "annotator":
        out.update(source=item["source"], status=item["status"], agreement=item["agreement"])
    return out


def _category_names(p: dict) -> dict[str, str]:
    if p["task"] != "safety":
        return {}
    from lightseek.safety.policy import CATEGORIES

    return {code: name for code, (name, _) in CATEGORIES.items()}

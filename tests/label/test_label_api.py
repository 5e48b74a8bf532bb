"""LabelHub's JSON API, every route and role, on SQLite and on a real PostgreSQL server: who may see
and do what, CSRF, scheduling with overlap (also under concurrent requests), reviews, imports,
pre-labels and active learning, statistics and the pages."""

from __future__ import annotations

import threading

import pytest

pytest.importorskip("argon2", reason="LabelHub hashes passwords with argon2-cffi (pip install -e .[label])")
pytest.importorskip("fastapi", reason="LabelHub's server needs FastAPI (pip install -e .[label])")
pytest.importorskip("sqlalchemy", reason="LabelHub needs SQLAlchemy (pip install -e .[label])")

from fastapi.testclient import TestClient  # noqa: E402

PASSWORD = "correct horse"


@pytest.fixture
def hub(db_url):
    """(app, users, store) on a fresh database, with an admin 'root'."""
    from lightseek.label.store import open_label_store
    from lightseek.label.web import build_label_app

    engine, users, store = open_label_store(db_url)
    users.add("root", PASSWORD, "admin")
    yield build_label_app(users, store), users, store
    engine.dispose()


class Client:
    """A signed-in browser-like client: its cookie, and its CSRF token on every write."""

    def __init__(self, app, username: str, password: str = PASSWORD):
        self.http = TestClient(app)
        r = self.http.post("/api/login", json={"username": username, "password": password})
        assert r.status_code == 200, r.text
        self.csrf, self.user = r.json()["csrf"], r.json()["user"]

    def get(self, url, **kw):
        return self.http.get(url, **kw)

    def send(self, method, url, **kw):
        return self.http.request(method, url, headers={"X-CSRF-Token": self.csrf}, **kw)

    def post(self, url, **kw):
        return self.send("POST", url, **kw)


def _setup(app, users, store, overlap=2, task="classify", config=None, n_items=4):
    root = Client(app, "root")
    ids = {name: root.post("/api/users", json={"username": name, "password": PASSWORD, "role": role}).json()["id"]
           for name, role in (("ann1", "annotator"), ("ann2", "annotator"), ("ann3", "annotator"),
                              ("rev", "reviewer"))}
    cfg = config or {"labels": ["medical", "finance", "legal"], "overlap": overlap}
    p1 = root.post("/api/projects", json={"name": "p1", "task": task, "config": cfg}).json()["id"]
    p2 = root.post("/api/projects", json={"name": "secret", "task": "classify",
                                          "config": {"labels": ["a", "b"]}}).json()["id"]
    for uid in ids.values():
        assert root.send("PUT", f"/api/projects/{p1}/members/{uid}").status_code == 200
    texts = [{"text": f"text number {i}"} for i in range(n_items)]
    assert root.post(f"/api/projects/{p1}/items", json=texts).json() == {"imported": n_items}
    assert root.post(f"/api/projects/{p2}/items", json=[{"text": "hidden"}]).status_code == 201
    return root, ids, p1, p2


def test_roles_visibility_and_csrf(hub):
    app, users, store = hub
    root, ids, p1, p2 = _setup(app, users, store)
    ann, rev = Client(app, "ann1"), Client(app, "rev")

    # an annotator sees their project only; the other one does not exist for them
    assert [p["name"] for p in ann.get("/api/projects").json()["data"]] == ["p1"]
    assert [p["name"] for p in root.get("/api/projects").json()["data"]] == ["p1", "secret"]
    assert ann.post(f"/api/projects/{p2}/next").status_code == 404
    for url in (f"/api/projects/{p2}", f"/api/projects/{p2}/annotations",
                f"/api/projects/{p2}/stats", "/api/projects/secret"):
        assert ann.get(url).status_code == 404, url
    # ... nor export, statistics, the review queue or the item list of their own
    for url in (f"/api/projects/{p1}/export?format=domains", f"/api/projects/{p1}/stats",
                f"/api/projects/{p1}/review", f"/api/projects/{p1}/items", "/api/users"):
        assert ann.get(url).status_code == 403, url
    assert ann.post("/api/projects", json={"name": "x", "task": "qa"}).status_code == 403
    assert ann.post(f"/api/projects/{p1}/items", json=[{"text": "t"}]).status_code == 403
    assert ann.send("PUT", f"/api/projects/{p1}/members/{ids['ann1']}").status_code == 403
    assert ann.post(f"/api/projects/{p1}/prelabels", json=[]).status_code == 403
    # a reviewer may not change roles or add users, but reviews, exports and sees statistics
    assert rev.send("PATCH", f"/api/users/{ids['ann1']}", json={"role": "admin"}).status_code == 403
    assert rev.post("/api/users", json={"username": "x1", "password": PASSWORD}).status_code == 403
    assert rev.get(f"/api/projects/{p1}/export?format=domains").status_code == 200
    assert rev.get(f"/api/projects/{p1}/stats").status_code == 200
    assert rev.get(f"/api/projects/{p2}/stats").status_code == 404
    # the admin changes roles; a deactivated user's session ends
    assert root.send("PATCH", f"/api/users/{ids['ann3']}", json={"role": "reviewer"}).json()["role"] == "reviewer"
    ann3 = Client(app, "ann3")
    assert ann3.get("/api/me").status_code == 200
    assert root.send("PATCH", f"/api/users/{ids['ann3']}", json={"active": False}).status_code == 200
    assert ann3.get("/api/me").status_code == 401
    assert TestClient(app).post("/api/login", json={"username": "ann3", "password": PASSWORD}).status_code == 401
    # not signed in: 401 on the API, the login page for pages
    anon = TestClient(app)
    assert anon.get("/api/projects").status_code == 401
    r = anon.get("/", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login"
    assert anon.post("/api/login", json={"username": "root", "password": "wrong password"}).status_code == 401
    # a write without the session's CSRF token (or with another session's) is refused
    assert ann.http.post(f"/api/projects/{p1}/next").status_code == 403  # claiming an item is a write
    assert ann.get(f"/api/projects/{p1}/next").status_code == 405
    item = ann.post(f"/api/projects/{p1}/next").json()
    url = f"/api/items/{item['id']}/annotations"
    assert ann.http.post(url, json={"value": {"labels": ["medical"]}}).status_code == 403
    assert ann.http.post(url, json={"value": {"labels": ["medical"]}},
                         headers={"X-CSRF-Token": rev.csrf}).status_code == 403
    assert ann.post(url, json={"value": {"labels": ["medical"]}}).status_code == 201
    # an annotator lists only their own annotations; a reviewer everyone's
    Client(app, "ann2").post(f"/api/items/{Client(app, 'ann2').post(f'/api/projects/{p1}/next').json()['id']}/skip")
    assert {a["username"] for a in ann.get(f"/api/projects/{p1}/annotations").json()["data"]} == {"ann1"}
    # users: bad input is a 422 naming the field, passwords are argon2id hashes
    assert "password" in root.post("/api/users", json={"username": "shorty", "password": "short"}).json()[
        "error"]["message"]
    assert root.post("/api/users", json={"username": "ann1", "password": PASSWORD}).status_code == 422
    assert root.post("/api/users", json={"username": "x y", "password": PASSWORD}).status_code == 422
    assert root.send("PATCH", f"/api/users/{ids['ann1']}", json={"role": "owner"}).status_code == 422
    import sqlalchemy as sa

    from lightseek.label import tables as t

    with store.engine.connect() as c:
        assert c.execute(sa.select(t.users.c.password_hash).where(t.users.c.username == "ann1")).scalar() \
            .startswith("$argon2id$")
    # logging out ends the session
    assert ann.post("/api/logout").status_code == 200
    assert ann.get("/api/me").status_code == 401


def test_overlap_review_and_export(hub):
    app, users, store = hub
    root, ids, p1, _ = _setup(app, users, store, overlap=2, n_items=3)
    a1, a2, a3, rev = (Client(app, n) for n in ("ann1", "ann2", "ann3", "rev"))
    answers = {"ann1": ["medical", "finance", "legal"], "ann2": ["medical", "legal", "legal"],
               "ann3": ["medical", "finance", "legal"]}
    given: dict[int, list[str]] = {}
    for c in (a1, a2, a3):
        name = c.user["username"]
        for k in range(3):
            item = c.post(f"/api/projects/{p1}/next")
            if item.status_code == 204:
                break
            item = item.json()
            assert c.post(f"/api/projects/{p1}/next").json()["id"] == item["id"]  # unanswered: the same again
            # an item not given to a member cannot be answered by them
            assert rev.post(f"/api/items/{item['id']}/annotations",
                              json={"value": {"labels": ["medical"]}}).status_code == 403
            label = answers[name][item["id"] - 1]
            assert c.post(f"/api/items/{item['id']}/annotations", json={"value": {"labels": [label]}}).status_code \
                == 201
            given.setdefault(item["id"], []).append(name)
    # each item went to exactly two annotators; the third found nothing left
    assert sorted(len(v) for v in given.values()) == [2, 2, 2]
    assert a3.post(f"/api/projects/{p1}/next").status_code == 204
    items = {i["id"]: i for i in rev.get(f"/api/projects/{p1}/items").json()["data"]}
    for iid, names in given.items():
        labels = [answers[n][iid - 1] for n in names]
        assert items[iid]["agreement"] == (1.0 if len(set(labels)) == 1 else 0.0)
        assert items[iid]["status"] == ("complete" if len(set(labels)) == 1 else "review")
    queue = rev.get(f"/api/projects/{p1}/review").json()["data"]
    disputed = [iid for iid, names in given.items() if len({answers[n][iid - 1] for n in names}) > 1]
    assert sorted(q["id"] for q in queue) == sorted(disputed)
    assert all(len(q["annotations"]) == 2 for q in queue)
    # reviewer decides: adjudicate with a value of their own; a bad decision or value is a 422
    target = queue[0]["id"]
    assert rev.post(f"/api/items/{target}/review", json={"decision": "maybe"}).status_code == 422
    assert rev.post(f"/api/items/{target}/review", json={"decision": "adjudicate"}).status_code == 422
    assert rev.post(f"/api/items/{target}/review", json={"decision": "adjudicate",
                                                         "value": {"labels": ["finance"]}}).status_code == 200
    assert a1.post(f"/api/items/{target}/review", json={"decision": "accept"}).status_code == 403
    # annotations are final once reviewed
    name = given[target][0]
    c = {"ann1": a1, "ann2": a2, "ann3": a3}[name]
    assert c.post(f"/api/items/{target}/annotations", json={"value": {"labels": ["legal"]}}).status_code == 422
    # export: all finished items; with --min-agreement 0.8, unanimous ones and reviewed ones
    lines = rev.get(f"/api/projects/{p1}/export?format=domains").text.splitlines()
    import json

    recs = [json.loads(x) for x in lines]
    by_item = {r["labelhub"]["item_id"]: r for r in recs}
    assert by_item[target]["domain"] == "finance" and by_item[target]["labelhub"]["decided_by"] == "review:adjudicate"
    assert by_item[target]["labelhub"]["review"]["reviewer"] == "rev"
    assert {a["user"] for a in by_item[target]["labelhub"]["annotators"]} == set(given[target])
    assert set(by_item) == set(given) - (set(disputed) - {target})  # a disputed, unreviewed item waits
    strict = rev.get(f"/api/projects/{p1}/export?format=domains&min_agreement=0.8").text.splitlines()
    assert len(strict) == len(recs)
    # a reject removes the item from the exports
    other = [q["id"] for q in queue if q["id"] != target]
    for iid in other:
        assert rev.post(f"/api/items/{iid}/review", json={"decision": "reject", "note": "unclear"}).status_code == 200
    assert len(rev.get(f"/api/projects/{p1}/export?format=domains").text.splitlines()) == len(recs)
    assert rev.get(f"/api/projects/{p1}/export?format=messages").status_code == 422  # not a qa project
    # statistics
    s = rev.get(f"/api/projects/{p1}/stats").json()
    assert s["items"] == 3 and s["annotations"] == 6 and s["by_status"].get("open", 0) == 0
    assert sum(a["annotations"] for a in s["annotators"]) == 6
    assert s["agreement"]["items_with_overlap"] == 3
    assert s["review_decisions"] == {"adjudicate": 1, **({"reject": len(other)} if other else {})}


def test_concurrent_annotators_never_exceed_overlap(db_url):
    """Twelve annotators asking at once, overlap 2: no item goes to more than two of them, none twice
    to the same annotator, and every item is handed out twice."""
    from lightseek.label.store import open_label_store

    engine, users, store = open_label_store(db_url)
    pid = store.create_project("race", "classify", {"labels": ["x", "y"], "overlap": 2})
    store.add_items(pid, [{"text": f"t{i}"} for i in range(30)])
    people = [users.get(users.add(f"u{i}", PASSWORD)) for i in range(12)]
    got: list[tuple[int, int]] = []
    lock, barrier = threading.Lock(), threading.Barrier(len(people))

    def work(user):
        barrier.wait()
        while True:
            item = store.next_item(pid, user)
            if item is None:
                return
            with lock:
                got.append((item["id"], user["id"]))
            store.annotate(item["id"], user, {"labels": ["x"]})

    threads = [threading.Thread(target=work, args=(u,)) for u in people]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=120)
    assert len(got) == len(set(got)) == 60
    per_item: dict[int, int] = {}
    for iid, _ in got:
        per_item[iid] = per_item.get(iid, 0) + 1
    assert set(per_item.values()) == {2} and len(per_item) == 30
    assert {i["done"] for i in store.items(pid, limit=100)} == {2}
    engine.dispose()


def test_task_types_values_and_exports(hub):
    """spans on Chinese text (code-point offsets), ranking -> preference pairs, a corrected draft ->
    messages, alpaca and a preference pair, safety categories -> the safety format, multi-label."""
    import json

    app, users, store = hub
    root = Client(app, "root")

    def project(name, task, config, records):
        pid = root.post("/api/projects", json={"name": name, "task": task, "config": config}).json()["id"]
        assert root.post(f"/api/projects/{pid}/items", json=records).status_code == 201
        return pid

    def answer(pid, value, expect=201):
        item = root.post(f"/api/projects/{pid}/next").json()
        r = root.post(f"/api/items/{item['id']}/annotations", json={"value": value})
        assert r.status_code == expect, r.text
        return item, r

    text = "😀张三在北京工作。"
    sp = project("ner", "spans", {"labels": ["PER", "LOC"]}, [{"text": text}])
    item, r = answer(sp, {"spans": [[1, 3, "PER"], [4, 99, "LOC"]]}, 422)
    assert "range" in r.json()["error"]["message"]
    answer(sp, {"spans": [[1, 3, "XXX"]]}, 422)
    answer(sp, {"spans": [[4, 6, "LOC"], [1, 3, "PER"]]})
    rec = json.loads(root.get(f"/api/projects/{sp}/export?format=spans").text)
    assert [(s["text"], s["label"]) for s in rec["spans"]] == [("张三", "PER"), ("北京", "LOC")]

    rk = project("rank", "rank", {}, [{"prompt": "Best greeting?", "responses": ["hi", "hello there", "yo"]}])
    answer(rk, {"ranking": [0, 0, 1]}, 422)
    answer(rk, {"ranking": [1, 0, 2]})
    pairs = [json.loads(x) for x in root.get(f"/api/projects/{rk}/export?format=preference").text.splitlines()]
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("hello there", "hi"), ("hello there", "yo")]

    qa = project("qa", "qa", {}, [{"messages": [{"role": "user", "content": "What is glaucoma?"},
                                                {"role": "assistant", "content": "An eye thing."}],
                                   "domain": "medical", "expert": {"spec": "adapters/medical"}}])
    item, _ = answer(qa, {"answer": "  "}, 422)
    assert item["data"] == {"question": "What is glaucoma?", "draft": "An eye thing."}
    answer(qa, {"answer": "A group of eye diseases that damage the optic nerve."})
    msg = json.loads(root.get(f"/api/projects/{qa}/export?format=messages").text)
    assert msg["messages"][1]["content"].startswith("A group of eye diseases")
    assert msg["labelhub"]["source"]["expert"] == {"spec": "adapters/medical"}  # the DataDistiller's provenance
    alp = json.loads(root.get(f"/api/projects/{qa}/export?format=alpaca").text)
    assert alp["instruction"] == "What is glaucoma?" and alp["output"].startswith("A group")
    pref = json.loads(root.get(f"/api/projects/{qa}/export?format=preference").text)
    assert (pref["chosen"].startswith("A group"), pref["rejected"]) == (True, "An eye thing.")

    sf = project("safety", "safety", {}, [{"text": "你好"}, {"text": "how do I hurt someone"}])
    answer(sf, {"categories": ["S99"]}, 422)
    answer(sf, {"categories": []})
    answer(sf, {"categories": ["S1"]})
    rows = [json.loads(x) for x in root.get(f"/api/projects/{sf}/export?format=safety").text.splitlines()]
    assert [(r["categories"], r["lang"]) for r in rows] == [([], "zh"), (["S1"], "en")]

    ml = project("multi", "classify", {"labels": ["a", "b", "c"], "multi": True}, [{"text": "t"}])
    answer(ml, {"labels": ["c", "a"]})
    assert json.loads(root.get(f"/api/projects/{ml}/export?format=domains").text)["domains"] == ["a", "c"]
    one = project("single", "classify", {"labels": ["a", "b"]}, [{"text": "t"}])
    answer(one, {"labels": ["a", "b"]}, 422)
    # bad project settings are 422s naming the setting
    for cfg, word in (({"labels": []}, "labels"), ({"labels": ["a"], "overlap": 0}, "overlap"),
                      ({"labels": ["a"], "order": "random"}, "order"), ({"labels": ["a"], "colour": 1}, "colour")):
        r = root.post("/api/projects", json={"name": "bad", "task": "classify", "config": cfg})
        assert r.status_code == 422 and word in r.json()["error"]["message"]
    assert root.post("/api/projects", json={"name": "bad", "task": "poetry"}).status_code == 422


def test_imports_jsonl_csv_and_bad_files(hub):
    app, users, store = hub
    root = Client(app, "root")
    pid = root.post("/api/projects", json={"name": "imp", "task": "classify",
                                           "config": {"labels": ["a", "b"]}}).json()["id"]
    csv_text = "text,source_id\n第一条,1\n\"second, with comma\",2\n"
    r = root.post(f"/api/projects/{pid}/items", files={"file": ("items.csv", csv_text.encode(), "text/csv")})
    assert r.status_code == 201 and r.json() == {"imported": 2}
    rows = root.get(f"/api/projects/{pid}/items").json()["data"]
    assert [x["data"]["text"] for x in rows] == ["第一条", "second, with comma"]
    assert rows[0]["source"] == {"source_id": "1", "import": "items.csv", "line": 2}
    bad = '{"text": "fine"}\n{"text": broken\n'
    r = root.post(f"/api/projects/{pid}/items", files={"file": ("b.jsonl", bad.encode(), "application/json")})
    assert r.status_code == 422 and "line 2" in r.json()["error"]["message"]
    r = root.post(f"/api/projects/{pid}/items", json=[{"text": "ok"}, {"title": "no text"}])
    assert r.status_code == 422 and "record 2" in r.json()["error"]["message"]
    assert len(root.get(f"/api/projects/{pid}/items").json()["data"]) == 2  # nothing of a bad batch written
    assert root.post(f"/api/projects/{pid}/items", json={"text": "not a list"}).status_code == 422
    assert root.post(f"/api/projects/{pid}/items", json=[]).status_code == 422


def test_prelabels_and_active_learning(hub):
    app, users, store = hub
    root = Client(app, "root")
    mk = lambda name, order: root.post("/api/projects", json={  # noqa: E731
        "name": name, "task": "classify", "config": {"labels": ["a", "b"], "order": order}}).json()["id"]
    lc, dis = mk("lc", "least_confidence"), mk("dis", "disagreement")
    for pid in (lc, dis):
        root.post(f"/api/projects/{pid}/items", json=[{"text": f"t{i}"} for i in range(4)])
    ids = [x["id"] for x in root.get(f"/api/projects/{lc}/items").json()["data"]]
    scores = [0.95, 0.55, 0.8, 0.6]
    r = root.post(f"/api/projects/{lc}/prelabels", json=[
        {"item_id": i, "model": "domains:clf", "version": "abc", "value": {"labels": ["a"]}, "score": s}
        for i, s in zip(ids, scores)])
    assert r.json() == {"added": 4}
    order = []
    while (r := root.post(f"/api/projects/{lc}/next")).status_code == 200:
        item = r.json()
        assert item["prelabels"][0]["model"] == "domains:clf" and item["prelabels"][0]["version"] == "abc"
        order.append(item["id"])
        root.post(f"/api/items/{item['id']}/annotations",
                  json={"value": {"labels": ["a"]}, "prelabel_id": item["prelabels"][0]["id"], "seconds": 2.5})
    assert order == [ids[1], ids[3], ids[2], ids[0]]  # least confident first
    rec = root.get(f"/api/projects/{lc}/export?format=domains").text.splitlines()[0]
    assert '"prelabels": [{"model": "domains:clf", "version": "abc", "score": 0.95}]' in rec
    # two models that disagree on one item put it first
    dids = [x["id"] for x in root.get(f"/api/projects/{dis}/items").json()["data"]]
    pre = [{"item_id": i, "model": m, "version": "1", "value": {"labels": [lab]}, "score": 0.9}
           for i in dids for m, lab in (("m1", "a"), ("m2", "b" if i == dids[2] else "a"))]
    root.post(f"/api/projects/{dis}/prelabels", json=pre)
    assert root.post(f"/api/projects/{dis}/next").json()["id"] == dids[2]
    # a pre-label must fit the task, name its model, and belong to the project
    bad = {"item_id": ids[0], "model": "m", "version": "1", "value": {"labels": ["zzz"]}}
    assert root.post(f"/api/projects/{lc}/prelabels", json=[bad]).status_code == 422
    assert root.post(f"/api/projects/{lc}/prelabels", json=[{**bad, "value": {"labels": ["a"]}, "model": ""}]) \
        .status_code == 422
    assert root.post(f"/api/projects/{lc}/prelabels", json=[{**bad, "value": {"labels": ["a"]}, "score": 3}]) \
        .status_code == 422
    assert root.post(f"/api/projects/{dis}/prelabels", json=[{**bad, "value": {"labels": ["a"]}}]).status_code \
        == 404
    assert root.post(f"/api/items/{ids[0]}/annotations", json={"value": {"labels": ["a"]},
                                                               "prelabel_id": 10_000}).status_code == 422


def test_pages_render_for_each_role(hub):
    app, users, store = hub
    root, ids, p1, p2 = _setup(app, users, store, overlap=2)
    for name in ("ann1", "ann2"):
        c = Client(app, name)
        item = c.post(f"/api/projects/{p1}/next").json()
        c.post(f"/api/items/{item['id']}/annotations", json={"value": {"labels": ["medical" if name == "ann1"
                                                                                  else "legal"]}})
    rev, ann = Client(app, "rev"), Client(app, "ann1")
    page = rev.get(f"/projects/{p1}").text
    assert page.count('<svg class="chart"') == 4 and 'id="agreement"' in page and 'id="export"' in page
    assert "Items by status" in page and "medical" in page
    assert 'review-item" data-item' in rev.get(f"/projects/{p1}/review").text
    mine = ann.get(f"/projects/{p1}").text
    assert 'id="dashboard"' not in mine and 'id="export"' not in mine and "annotated 1 item." in mine
    assert ann.get(f"/projects/{p1}/review").status_code == 403
    assert ann.get(f"/projects/{p2}").status_code == 404 and "no project" in ann.get(f"/projects/{p2}").text
    assert ann.get("/users").status_code == 403 and root.get("/users").status_code == 200
    assert root.get(f"/projects/{p1}/annotate").status_code == 200
    # the sign-in form carries its own CSRF token (double submit: a cookie and a field)
    browser = TestClient(app)
    token = lambda r: r.text.split('name="login_csrf" value="')[1].split('"')[0]  # noqa: E731  (each page's own)
    r = browser.post("/login", data={"username": "root", "password": PASSWORD})
    assert r.status_code == 403 and "expired" in r.text
    r = browser.post("/login", data={"username": "root", "password": "nope", "login_csrf": token(r)})
    assert r.status_code == 401 and "Wrong username or password" in r.text
    forged = TestClient(app).get("/login")  # another visitor's token does not match this cookie
    assert browser.post("/login", data={"username": "root", "password": PASSWORD,
                                        "login_csrf": token(forged)}).status_code == 403
    r = browser.post("/login", data={"username": "root", "password": PASSWORD,
                                     "login_csrf": token(browser.get("/login"))}, follow_redirects=False)
    assert r.status_code == 303 and browser.get("/api/me").json()["user"]["username"] == "root"


def test_members_skip_and_the_remaining_routes(hub):
    app, users, store = hub
    root, ids, p1, p2 = _setup(app, users, store, overlap=1, n_items=2)
    ann1, ann2 = Client(app, "ann1"), Client(app, "ann2")
    info = ann1.get(f"/api/projects/{p1}").json()
    assert info["task"] == "classify" and {m["username"] for m in info["members"]} == {"ann1", "ann2", "ann3", "rev"}
    # a skipped item goes to someone else, never back to the one who skipped it
    first = ann1.post(f"/api/projects/{p1}/next").json()["id"]
    assert ann1.post(f"/api/items/{first}/skip").status_code == 200
    assert ann1.post(f"/api/items/{first}/skip").status_code == 422
    assert ann1.post(f"/api/projects/{p1}/next").json()["id"] != first
    assert ann2.post(f"/api/projects/{p1}/next").json()["id"] == first
    assert ann1.post(f"/api/items/{first}/annotations", json={"value": {"labels": ["legal"]}}).status_code == 403
    # removing a member hides the project from them at once
    assert root.send("DELETE", f"/api/projects/{p1}/members/{ids['ann2']}").status_code == 200
    assert ann2.get(f"/api/projects/{p1}").status_code == 404
    assert ann2.post(f"/api/items/{first}/annotations", json={"value": {"labels": ["legal"]}}).status_code == 404
    assert ann1.send("DELETE", f"/api/projects/{p1}/members/{ids['ann1']}").status_code == 403
    assert root.send("PUT", f"/api/projects/{p1}/members/9999").status_code == 404
    assert root.get("/api/projects/nope").status_code == 404
    # the page script, the health check, and the sign-out form (which needs the CSRF token)
    assert "LabelHub" in ann1.get("/static/label.js").text and ann1.get("/healthz").json() == {"ok": True}
    assert ann1.http.post("/logout", data={"csrf": "forged"}).status_code == 403
    assert ann1.get("/api/me").status_code == 200
    assert ann1.http.post("/logout", data={"csrf": ann1.csrf}, follow_redirects=False).status_code == 303
    assert ann1.get("/api/me").status_code == 401


def test_what_review_found(hub):
    """Cases a code review found: each was a 500, a leak, a stuck item or a wrong export."""
    import json

    app, users, store = hub
    root, ids, p1, p2 = _setup(app, users, store, overlap=2, n_items=2)
    ann1, ann2, rev = Client(app, "ann1"), Client(app, "ann2"), Client(app, "rev")
    # an item of a project the caller cannot see is 'no item', as a missing one is
    hidden = store.items(p2)[0]["id"]
    for iid in (hidden, 10**6):
        r = ann1.post(f"/api/items/{iid}/skip")
        assert r.status_code == 404 and r.json()["error"]["message"] == f"no item {iid}"
    # ids past 64 bits, non-UTF-8 uploads, wrong types: 422, never 500
    assert ann1.post(f"/api/items/{10**30}/skip").status_code == 422
    assert root.post(f"/api/projects/{p1}/items", files={"file": ("x.jsonl", b'{"text": "\xff"}', "text/plain")}) \
        .json()["error"]["message"] == "x.jsonl: not UTF-8 (byte 10)"
    assert root.post(f"/api/projects/{p1}/prelabels", json=[{"item_id": "abc", "value": {}}]).status_code == 422
    assert root.send("PATCH", f"/api/users/{ids['ann3']}", json={"active": "false"}).status_code == 422
    assert root.send("PATCH", "/api/users/9999", json={"role": "admin"}).status_code == 404
    assert root.send("PATCH", f"/api/users/{root.user['id']}", json={"role": "reviewer"}).json()["error"][
        "message"] == "that would leave no active admin"
    for cfg in ([1], {"labels": "xyz"}, {"labels": ["a"], "multi": "no"}, {"labels": ["a"], "overlap": 1.5}):
        assert root.post("/api/projects", json={"name": "bad", "task": "classify", "config": cfg}).status_code == 422
    assert root.post("/api/projects", json={"name": "123", "task": "qa"}).status_code == 422
    # JSON lines may hold U+2028 raw (the exports write it so)
    line = json.dumps({"text": "a\u2028b"}, ensure_ascii=False).encode()
    assert root.post(f"/api/projects/{p1}/items", files={"file": ("u.jsonl", line, "text/plain")}).status_code == 201
    # a member removed (or deactivated) gives back the items waiting for their answer
    held = ann1.post(f"/api/projects/{p1}/next").json()["id"]
    ann2.post(f"/api/projects/{p1}/next")
    assert root.send("DELETE", f"/api/projects/{p1}/members/{ids['ann1']}").status_code == 200
    ann3 = Client(app, "ann3")
    assert ann3.post(f"/api/projects/{p1}/next").json()["id"] == held
    # a reviewer cannot decide an item still being annotated, nor one they annotated
    assert rev.post(f"/api/items/{held}/review", json={"decision": "reject"}).status_code == 422
    ann2_item = ann2.post(f"/api/projects/{p1}/next").json()["id"]
    assert ann2_item == held
    ann2.post(f"/api/items/{held}/annotations", json={"value": {"labels": ["medical"]}})
    ann3.post(f"/api/items/{held}/annotations", json={"value": {"labels": ["legal"]}})
    assert store.item(held)["status"] == "review"
    # waiting for review: never exported, whatever the agreement asked for
    for q in ("", "&min_agreement=0"):
        assert rev.get(f"/api/projects/{p1}/export?format=domains{q}").text == ""
    # accepting a tie would take one annotator's answer silently: adjudicate instead
    assert "no majority" in rev.post(f"/api/items/{held}/review", json={"decision": "accept"}).json()["error"][
        "message"]
    assert rev.post(f"/api/items/{held}/review", json={"decision": "adjudicate", "value": {"labels": ["legal"]},
                                                       "note": {"not": "text"}}).status_code == 422
    root.send("PATCH", f"/api/users/{ids['ann2']}", json={"role": "reviewer"})
    ann2 = Client(app, "ann2")
    assert ann2.post(f"/api/items/{held}/review", json={"decision": "accept"}).status_code == 403  # their own
    assert rev.post(f"/api/items/{held}/review", json={"decision": "adjudicate",
                                                       "value": {"labels": ["legal"]}}).status_code == 200
    # a rank given in floats, spans with booleans: refused, so that no export breaks on them
    rk = root.post("/api/projects", json={"name": "rk", "task": "rank"}).json()["id"]
    root.post(f"/api/projects/{rk}/items", json=[{"prompt": "p", "responses": ["a", "b"]}])
    iid = root.post(f"/api/projects/{rk}/next").json()["id"]
    for bad in ([1.0, 0], ["a", 0], [True, 0]):
        assert root.post(f"/api/items/{iid}/annotations", json={"value": {"ranking": bad}}).status_code == 422
    sp = root.post("/api/projects", json={"name": "sp", "task": "spans", "config": {"labels": ["X"]}}).json()["id"]
    root.post(f"/api/projects/{sp}/items", json=[{"text": "abc"}])
    iid = root.post(f"/api/projects/{sp}/next").json()["id"]
    assert root.post(f"/api/items/{iid}/annotations", json={"value": {"spans": [[False, True, "X"]]}}) \
        .status_code == 422
    assert root.post(f"/api/items/{iid}/annotations", json={"value": {"spans": []}, "prelabel_id": [1]}) \
        .status_code == 422


def test_an_unanswered_item_goes_back_after_its_lease(db_url):
    import time

    from lightseek.label.store import open_label_store

    engine, users, store = open_label_store(db_url)
    store.sweep_every_s = 0.0
    pid = store.create_project("lease", "classify", {"labels": ["x"], "lease_hours": 0.0001})  # 0.36 s
    store.add_items(pid, [{"text": "t"}])
    a, b = (users.get(users.add(n, PASSWORD)) for n in ("ann", "bob"))
    held = store.next_item(pid, a)["id"]
    assert store.next_item(pid, b) is None  # overlap 1: the item is a's
    time.sleep(1.5)  # hand-out times are whole seconds
    assert store.next_item(pid, b)["id"] == held
    with pytest.raises(Exception, match="not given to you"):
        store.annotate(held, a, {"labels": ["x"]})
    store.annotate(held, b, {"labels": ["x"]})
    assert store.item(held)["claims"] == 1 and store.item(held)["status"] == "complete"
    engine.dispose()

"""LabelHub's records: projects and members, items and their pre-labels, who gets which item next,
annotations, reviews, and the value an item ends with.

Scheduling: each item goes to ``overlap`` different annotators. Handing one out is a conditional
UPDATE (``claims < overlap``) in the transaction that records the assignment, so two annotators
asking at once never push an item past its overlap, on SQLite (whose write transactions queue) or
PostgreSQL (whose row lock makes the second UPDATE re-check). An annotator who asks again before
answering gets the same item back; a skipped item goes to someone else. The order is the
project's: by id, by least confidence of the pre-labels, or by how much the models disagree.

An item is complete when ``overlap`` annotations are in; its agreement is then recorded and, as
the project says, it goes to the review queue (every item, or those whose annotators disagree).
A reviewer accepts (the annotators' value, or the majority's), adjudicates (a value of their own)
or rejects (the item leaves the exports).
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter

import sqlalchemy as sa

from lightseek.label import tables as t
from lightseek.label.agreement import item_agreement
from lightseek.label.auth import AuthError
from lightseek.label.tasks import LabelError, NotFound, ProjectConfig, check_value, is_int, item_data, value_key

DECISIONS = ("accept", "adjudicate", "reject")
INSERT_CHUNK = 2000


def _loads(s):
    return json.loads(s) if s else None


def _dumps(v) -> str:
    return json.dumps(v, ensure_ascii=False, sort_keys=True)


class LabelStore:
    """Everything LabelHub stores, on one SQLAlchemy engine."""

    def __init__(self, engine, sweep_every_s: float = 60.0):
        self.engine = engine
        self.postgresql = engine.dialect.name == "postgresql"
        # how often a project's expired leases are looked for (at a hand-out, at most this often)
        self.sweep_every_s = sweep_every_s
        self._swept: dict[int, float] = {}

    # --- projects and members -------------------------------------------------------------

    def create_project(self, name: str, task: str, config: dict | None = None, created_by: int | None = None) -> int:
        if not isinstance(name, str) or not name.strip() or len(name) > 100:
            raise LabelError("name: a project needs a name of 1-100 characters")
        if name.isdigit():  # a project is named by id or by name wherever it is looked up
            raise LabelError(f"name {name!r}: a project's name needs a character that is not a digit")
        cfg = ProjectConfig.of(task, config)
        with self.engine.begin() as c:
            if c.execute(sa.select(t.projects.c.id).where(t.projects.c.name == name)).first():
                raise LabelError(f"a project named {name!r} exists")
            return c.execute(t.projects.insert().values(
                name=name, task=task, config=cfg.to_json(), created_by=created_by,
                created_at=int(time.time()))).inserted_primary_key[0]

    def project(self, ref: int | str) -> dict:
        """A project by id or name."""
        by_id = is_int(ref) or (isinstance(ref, str) and ref.isascii() and ref.isdigit())
        col, key = (t.projects.c.id, int(ref)) if by_id else (t.projects.c.name, ref)
        with self.engine.connect() as c:
            row = c.execute(sa.select(t.projects).where(col == key)).mappings().first()
        if not row:
            raise NotFound(f"no project {ref!r}")
        return _project(row)

    def projects(self, user: dict) -> list[dict]:
        q = sa.select(t.projects).order_by(t.projects.c.id)
        if user["role"] != "admin":
            q = q.join(t.members, t.members.c.project_id == t.projects.c.id).where(t.members.c.user_id == user["id"])
        with self.engine.connect() as c:
            return [_project(r) for r in c.execute(q).mappings()]

    def visible_project(self, user: dict, ref: int | str) -> dict:
        """The project if ``user`` may see it (an admin, or a member); otherwise NotFound, so that
        a non-member learns nothing about it, not even that it exists."""
        p = self.project(ref)
        if user["role"] != "admin" and not self.is_member(p["id"], user["id"]):
            raise NotFound(f"no project {ref!r}")
        return p

    def is_member(self, pid: int, uid: int) -> bool:
        with self.engine.connect() as c:
            return c.execute(sa.select(t.members.c.user_id).where(
                t.members.c.project_id == pid, t.members.c.user_id == uid)).first() is not None

    def add_member(self, pid: int, uid: int) -> None:
        with self.engine.begin() as c:
            if not c.execute(sa.select(t.users.c.id).where(t.users.c.id == uid)).first():
                raise NotFound(f"no user {uid}")
            if not c.execute(sa.select(t.members.c.user_id).where(
                    t.members.c.project_id == pid, t.members.c.user_id == uid)).first():
                c.execute(t.members.insert().values(project_id=pid, user_id=uid, added_at=int(time.time())))

    def remove_member(self, pid: int, uid: int) -> None:
        """The user leaves the project; items waiting for their answer go to someone else."""
        with self.engine.begin() as c:
            c.execute(t.members.delete().where(t.members.c.project_id == pid, t.members.c.user_id == uid))
            release_open(c, uid, pid)

    def members(self, pid: int) -> list[dict]:
        q = (sa.select(t.users.c.id, t.users.c.username, t.users.c.role)
             .join(t.members, t.members.c.user_id == t.users.c.id).where(t.members.c.project_id == pid)
             .order_by(t.users.c.username))
        with self.engine.connect() as c:
            return [dict(r) for r in c.execute(q).mappings()]

    # --- items and pre-labels -------------------------------------------------------------

    def add_items(self, pid: int, records, origin: str = "api") -> int:
        """Import records (dicts, or (line, dict) pairs) into project ``pid``; every record is
        checked before any is written, and an error names the record's line."""
        p = self.project(pid)
        now, rows = int(time.time()), []
        for n, rec in enumerate(records, start=1):
            line, rec = rec if isinstance(rec, tuple) else (n, rec)
            try:
                data, source = item_data(p["task"], rec)
            except LabelError as e:
                raise LabelError(f"{origin} record {line}: {e}") from None
            rows.append({"project_id": pid, "data": _dumps(data),
                         "source": _dumps({**source, "import": origin, "line": line}),
                         "claims": 0, "done": 0, "uncertainty": 0.0, "disagreement": 0.0, "status": "open",
                         "created_at": now})
        if not rows:
            raise LabelError(f"{origin}: no records")
        with self.engine.begin() as c:
            for i in range(0, len(rows), INSERT_CHUNK):
                c.execute(t.items.insert(), rows[i:i + INSERT_CHUNK])
        self._analyze(len(rows))
        return len(rows)

    def _analyze(self, written: int) -> None:
        """PostgreSQL plans the next-item query from table statistics; after a bulk import they
        would still describe an empty table (measured: a 100 ms sort of 100k items per hand-out
        instead of an index read), so refresh them rather than wait for autovacuum."""
        if self.postgresql and written >= 1000:
            with self.engine.connect() as c:
                c.exec_driver_sql("ANALYZE label_items")
                c.commit()

    def item(self, item_id: int) -> dict:
        with self.engine.connect() as c:
            row = c.execute(sa.select(t.items).where(t.items.c.id == item_id)).mappings().first()
            if not row:
                raise NotFound(f"no item {item_id}")
            pre = c.execute(sa.select(t.prelabels).where(t.prelabels.c.item_id == item_id)
                            .order_by(t.prelabels.c.id)).mappings().all()
        return {**_item(row), "prelabels": [_prelabel(r) for r in pre]}

    def items(self, pid: int, status: str | None = None, offset: int = 0, limit: int = 50) -> list[dict]:
        q = sa.select(t.items).where(t.items.c.project_id == pid)
        if status:
            q = q.where(t.items.c.status == status)
        with self.engine.connect() as c:
            return [_item(r) for r in c.execute(q.order_by(t.items.c.id).offset(offset).limit(min(limit, 500)))
                    .mappings()]

    def iter_items(self, pid: int, status: str | None = None, page: int = 500):
        """Every item of a project (of one status), in id order, a page at a time."""
        offset = 0
        while True:
            rows = self.items(pid, status=status, offset=offset, limit=page)
            yield from rows
            if len(rows) < page:
                return
            offset += page

    def progress(self, pid: int) -> dict:
        """Items by status, how many there are and how many are finished (complete or reviewed)."""
        with self.engine.connect() as c:
            by_status = dict(c.execute(sa.select(t.items.c.status, sa.func.count())
                                       .where(t.items.c.project_id == pid).group_by(t.items.c.status)).all())
        return {"by_status": by_status, "items": sum(by_status.values()),
                "finished": by_status.get("complete", 0) + by_status.get("reviewed", 0)}

    def prelabels(self, ids) -> dict[int, dict]:
        ids, out = sorted(set(ids)), {}
        with self.engine.connect() as c:
            for i in range(0, len(ids), 500):
                for r in c.execute(sa.select(t.prelabels).where(t.prelabels.c.id.in_(ids[i:i + 500]))).mappings():
                    out[r["id"]] = _prelabel(r)
        return out

    def add_prelabels(self, pid: int, rows: list[dict]) -> int:
        """Pre-labels ``{item_id, model, version, value, score}`` (value in the task's annotation
        form, checked like an annotation); each item's uncertainty (1 - its best score) and the
        models' disagreement (1 - the share of the most common value) are recomputed."""
        p = self.project(pid)
        cfg, now = p["config"], int(time.time())
        by_item: dict[int, list[dict]] = {}
        for r in rows:
            if not is_int(r.get("item_id")):
                raise LabelError(f"item_id {r.get('item_id')!r}: an item's id (an integer)")
            by_item.setdefault(r["item_id"], []).append(r)
        ids = list(by_item)
        with self.engine.begin() as c:
            found = {}
            for i in range(0, len(ids), 500):  # a statement takes at most 65,535 parameters (PostgreSQL)
                found.update((row.id, _loads(row.data)) for row in c.execute(
                    sa.select(t.items.c.id, t.items.c.data).where(t.items.c.project_id == pid,
                                                                  t.items.c.id.in_(ids[i:i + 500]))))
            missing = sorted(set(by_item) - set(found))
            if missing:
                raise NotFound(f"items {missing[:5]} are not in project {p['name']!r}")
            inserts = []
            for item_id, rs in by_item.items():
                for r in rs:
                    if not r.get("model") or not r.get("version"):
                        raise LabelError(f"item {item_id}: a pre-label needs the model's name and version")
                    score = r.get("score")
                    if score is not None and not (isinstance(score, (int, float)) and 0 <= score <= 1):
                        raise LabelError(f"item {item_id}: score {score!r} is not in [0, 1]")
                    value = check_value(p["task"], cfg, found[item_id], r["value"])
                    inserts.append({"item_id": item_id, "model": str(r["model"]), "version": str(r["version"]),
                                    "value": _dumps(value), "score": score, "created_at": now})
            for i in range(0, len(inserts), INSERT_CHUNK):
                c.execute(t.prelabels.insert(), inserts[i:i + INSERT_CHUNK])
            for i in range(0, len(ids), 500):
                chunk = ids[i:i + 500]
                pres: dict[int, list] = {}
                for r in c.execute(sa.select(t.prelabels.c.item_id, t.prelabels.c.model, t.prelabels.c.value,
                                             t.prelabels.c.score).where(t.prelabels.c.item_id.in_(chunk))
                                   .order_by(t.prelabels.c.id)):
                    pres.setdefault(r.item_id, []).append(r)
                updates = [{"iid": iid, **_active_learning(p["task"], ps)} for iid, ps in pres.items()]
                c.execute(t.items.update().where(t.items.c.id == sa.bindparam("iid"))
                          .values(uncertainty=sa.bindparam("uncertainty"), disagreement=sa.bindparam("disagreement")),
                          updates)
        self._analyze(len(inserts))
        return len(inserts)

    # --- who annotates what ---------------------------------------------------------------

    def next_item(self, pid: int, user: dict) -> dict | None:
        """The item ``user`` should annotate next in project ``pid`` (their unanswered one first),
        or None when nothing is left for them."""
        cfg = self.project(pid)["config"]
        order = {"sequential": "i.id", "least_confidence": "i.uncertainty DESC, i.id",
                 "disagreement": "i.disagreement DESC, i.uncertainty DESC, i.id"}[cfg.order]
        args = {"p": pid, "u": user["id"], "n": cfg.overlap, "now": int(time.time())}
        pick = ("SELECT i.id FROM label_items i WHERE i.project_id = :p AND i.claims < :n AND i.status = 'open' "
                "AND NOT EXISTS (SELECT 1 FROM label_assignments a WHERE a.item_id = i.id AND a.user_id = :u) "
                f"ORDER BY {order} LIMIT 1")
        # PostgreSQL: lock the row picked, passing over rows other hand-outs hold, so that twenty
        # annotators asking at once do not queue on the same top item (a last try waits for them,
        # so that "nothing left" is never said while items are only locked). SQLite's write
        # transactions run one at a time: nothing to pass over.
        tries = [pick + " FOR UPDATE OF i SKIP LOCKED", pick + " FOR UPDATE OF i"] if self.postgresql else [pick]
        if time.monotonic() - self._swept.get(pid, -math.inf) >= self.sweep_every_s:
            self._swept[pid] = time.monotonic()
            self.release_expired(pid, cfg.lease_hours)
        with self.engine.begin() as c:
            item_id = c.execute(sa.text(
                "SELECT a.item_id FROM label_assignments a JOIN label_items i ON i.id = a.item_id "
                "WHERE a.project_id = :p AND a.user_id = :u AND a.state = 'open' AND i.status = 'open' "
                "ORDER BY a.at LIMIT 1"), args).scalar()
            for query in tries if item_id is None else ():
                cand = c.execute(sa.text(query), args).scalar()
                # the claim re-checks the overlap on the locked (or, on SQLite, only) current row
                if cand is not None and c.execute(sa.text(
                        "UPDATE label_items SET claims = claims + 1 WHERE id = :i AND claims < :n"),
                        {**args, "i": cand}).rowcount:
                    c.execute(t.assignments.insert().values(item_id=cand, user_id=user["id"], project_id=pid,
                                                            state="open", at=args["now"]))
                    item_id = cand
                    break
        return None if item_id is None else self.item(item_id)

    def release_expired(self, pid: int, lease_hours: float) -> int:
        """Items handed out longer than ``lease_hours`` ago and still unanswered go back to the
        pool (an annotator who closed the tab does not hold them for ever); returns how many."""
        cutoff = int(time.time() - lease_hours * 3600)
        with self.engine.begin() as c:
            stale = c.execute(sa.text("SELECT item_id, user_id FROM label_assignments WHERE project_id = :p "
                                      "AND state = 'open' AND at < :cutoff"), {"p": pid, "cutoff": cutoff}).all()
            for item_id, user_id in stale:
                self._lock(c, item_id)
                if c.execute(sa.text("DELETE FROM label_assignments WHERE item_id = :i AND user_id = :u "
                                     "AND state = 'open'"), {"i": item_id, "u": user_id}).rowcount:
                    c.execute(sa.text("UPDATE label_items SET claims = claims - 1 WHERE id = :i"), {"i": item_id})
        return len(stale)

    def skip(self, item_id: int, user: dict) -> None:
        """Give the item back: it goes to another annotator, never again to this one."""
        with self.engine.begin() as c:
            self._lock(c, item_id)
            if c.execute(t.assignments.update().where(
                    t.assignments.c.item_id == item_id, t.assignments.c.user_id == user["id"],
                    t.assignments.c.state == "open").values(state="skipped")).rowcount:
                c.execute(sa.text("UPDATE label_items SET claims = claims - 1 WHERE id = :i"), {"i": item_id})
            else:
                raise LabelError(f"item {item_id} is not waiting for your answer")

    def annotate(self, item_id: int, user: dict, value, prelabel_id: int | None = None,
                 seconds: float | None = None) -> dict:
        """Record (or, before review, replace) ``user``'s annotation of an item given to them."""
        item = self.item(item_id)
        p = self.project(item["project_id"])
        value = check_value(p["task"], p["config"], item["data"], value)
        if prelabel_id is not None and (not is_int(prelabel_id)
                                        or prelabel_id not in {x["id"] for x in item["prelabels"]}):
            raise LabelError(f"prelabel_id {prelabel_id!r} is not a pre-label of item {item_id}")
        if seconds is not None and not (type(seconds) in (int, float) and 0 <= seconds < 86400):
            raise LabelError("seconds: the time spent, 0 to 86400")
        now = int(time.time())
        with self.engine.begin() as c:
            # the item's row lock orders this against a concurrent skip, review or double submit
            if self._lock(c, item_id) in ("reviewed", "rejected"):
                raise LabelError(f"item {item_id} has been reviewed; its annotations are final")
            state = c.execute(sa.select(t.assignments.c.state).where(
                t.assignments.c.item_id == item_id, t.assignments.c.user_id == user["id"])).scalar()
            if state not in ("open", "done"):
                raise AuthError(f"item {item_id} was not given to you (ask for the next item)", 403)
            fields = {"value": _dumps(value), "prelabel_id": prelabel_id, "seconds": seconds, "updated_at": now}
            if state == "done":
                c.execute(t.annotations.update().where(t.annotations.c.item_id == item_id,
                                                       t.annotations.c.user_id == user["id"]).values(**fields))
            else:
                c.execute(t.annotations.insert().values(item_id=item_id, project_id=p["id"], user_id=user["id"],
                                                        created_at=now, **fields))
                c.execute(t.assignments.update().where(t.assignments.c.item_id == item_id,
                                                       t.assignments.c.user_id == user["id"]).values(state="done"))
                c.execute(sa.text("UPDATE label_items SET done = done + 1 WHERE id = :i"), {"i": item_id})
            self._settle(c, p, item_id)
        return value

    def _lock(self, c, item_id: int) -> str:
        """The item's status, its row locked for the transaction (PostgreSQL; SQLite's write
        transactions hold the whole database already)."""
        q = sa.select(t.items.c.status).where(t.items.c.id == item_id)
        status = c.execute(q.with_for_update() if self.postgresql else q).scalar()
        if status is None:
            raise NotFound(f"no item {item_id}")
        return status

    def _settle(self, c, p: dict, item_id: int) -> None:
        """After an annotation: the item's agreement, and complete / review once overlap is met."""
        values = [_loads(v) for v in c.execute(sa.select(t.annotations.c.value)
                                               .where(t.annotations.c.item_id == item_id)).scalars()]
        keys = [value_key(p["task"], v) for v in values]
        agreement = item_agreement(keys, spans=p["task"] == "spans")
        cfg, status = p["config"], "open"
        if len(values) >= cfg.overlap:
            disagree = agreement is not None and agreement < 1
            status = "review" if cfg.review == "all" or (cfg.review == "disagreement" and disagree) else "complete"
        c.execute(t.items.update().where(t.items.c.id == item_id, t.items.c.status.notin_(("reviewed", "rejected")))
                  .values(agreement=agreement, status=status))

    def annotations(self, pid: int, user: dict | None = None, item_id: int | None = None,
                    item_ids: list[int] | None = None) -> list[dict]:
        """A project's annotations (only ``user``'s, or those of the given items), oldest first."""
        q = (sa.select(t.annotations, t.users.c.username).join(t.users, t.users.c.id == t.annotations.c.user_id)
             .where(t.annotations.c.project_id == pid).order_by(t.annotations.c.id))
        if user is not None:
            q = q.where(t.annotations.c.user_id == user["id"])
        if item_id is not None:
            q = q.where(t.annotations.c.item_id == item_id)
        if item_ids is not None:
            q = q.where(t.annotations.c.item_id.in_(item_ids))
        with self.engine.connect() as c:
            return [{**dict(r), "value": _loads(r["value"])} for r in c.execute(q).mappings()]

    # --- review ---------------------------------------------------------------------------

    def review_queue(self, pid: int, limit: int = 50) -> list[dict]:
        """Items waiting for a reviewer, least agreement first, with their annotations."""
        q = (sa.select(t.items).where(t.items.c.project_id == pid, t.items.c.status == "review")
             .order_by(t.items.c.agreement.asc().nulls_first() if self.postgresql else t.items.c.agreement,
                       t.items.c.id).limit(limit))
        with self.engine.connect() as c:
            rows = [_item(r) for r in c.execute(q).mappings()]
            ids = [r["id"] for r in rows]
            pres: dict[int, list] = {i: [] for i in ids}
            for x in c.execute(sa.select(t.prelabels).where(t.prelabels.c.item_id.in_(ids))
                               .order_by(t.prelabels.c.id)).mappings():
                pres[x["item_id"]].append(_prelabel(x))
        anns: dict[int, list] = {i: [] for i in ids}
        for a in self.annotations(pid, item_ids=ids):
            anns[a["item_id"]].append(a)
        return [{**r, "annotations": anns[r["id"]], "prelabels": pres[r["id"]]} for r in rows]

    def review(self, item_id: int, reviewer: dict, decision: str, value=None, note: str | None = None) -> dict:
        item = self.item(item_id)
        p = self.project(item["project_id"])
        if decision not in DECISIONS:
            raise LabelError(f"decision {decision!r}: choose one of {', '.join(DECISIONS)}")
        if note is not None and not isinstance(note, str):
            raise LabelError("note: a text, or nothing")
        anns = self.annotations(p["id"], item_id=item_id)
        if reviewer["role"] != "admin" and any(a["user_id"] == reviewer["id"] for a in anns):
            raise AuthError(f"item {item_id} has your own annotation: another reviewer decides it", 403)
        if decision == "adjudicate" and value is None:
            raise LabelError("adjudicate: give the value the item should have")
        if value is not None:
            value = check_value(p["task"], p["config"], item["data"], value)
        elif decision == "accept":
            if not anns:
                raise LabelError(f"item {item_id} has no annotation to accept")
            value, how = resolve(p["task"], [a["value"] for a in anns])
            if how == "plurality":
                raise LabelError(f"item {item_id}: no majority among its annotators to accept; adjudicate it")
        with self.engine.begin() as c:
            if self._lock(c, item_id) not in ("complete", "review", "reviewed"):
                raise LabelError(f"item {item_id} is still being annotated; review it once it is complete")
            c.execute(t.reviews.insert().values(item_id=item_id, project_id=p["id"], reviewer_id=reviewer["id"],
                                                decision=decision, value=None if value is None else _dumps(value),
                                                note=note, created_at=int(time.time())))
            c.execute(t.items.update().where(t.items.c.id == item_id)
                      .values(status="rejected" if decision == "reject" else "reviewed"))
        return {"item_id": item_id, "decision": decision, "value": value}

    def reviews(self, pid: int) -> dict[int, dict]:
        """Each item's latest review."""
        q = (sa.select(t.reviews, t.users.c.username).join(t.users, t.users.c.id == t.reviews.c.reviewer_id)
             .where(t.reviews.c.project_id == pid).order_by(t.reviews.c.id))
        with self.engine.connect() as c:
            return {r["item_id"]: {**dict(r), "value": _loads(r["value"])} for r in c.execute(q).mappings()}


def resolve(task: str, values: list[dict]) -> tuple[dict, str]:
    """(the value the annotators give an item, how: single | unanimous | majority | plurality).
    Free-text answers are compared after whitespace is normalised; ties go to the earliest."""
    keys = [value_key(task, v) for v in values]
    counts = Counter(keys)
    best, n = max(counts.items(), key=lambda kv: (kv[1], -keys.index(kv[0])))
    how = ("single" if len(values) == 1 else "unanimous" if n == len(values)
           else "majority" if n * 2 > len(values) else "plurality")
    return values[keys.index(best)], how


def release_open(c, user_id: int, project_id: int | None = None) -> int:
    """Items given to ``user_id`` and not yet answered go back to the pool (their claims are
    returned), in one project or all: for a member removed or a user deactivated."""
    where = "user_id = :u AND state = 'open'" + (" AND project_id = :p" if project_id is not None else "")
    args = {"u": user_id, "p": project_id}
    held = c.execute(sa.text(f"SELECT item_id FROM label_assignments WHERE {where}"), args).scalars().all()
    for item_id in held:
        c.execute(sa.text("UPDATE label_items SET claims = claims - 1 WHERE id = :i"), {"i": item_id})
    c.execute(sa.text(f"DELETE FROM label_assignments WHERE {where}"), args)
    return len(held)


def _active_learning(task: str, prelabels) -> dict:
    scores = [r.score for r in prelabels if r.score is not None]
    latest: dict[str, object] = {}
    for r in prelabels:  # a model's latest pre-label counts
        latest[r.model] = value_key(task, _loads(r.value))
    top = Counter(latest.values()).most_common(1)[0][1] if latest else 0
    return {"uncertainty": round(1 - max(scores), 6) if scores else 0.0,
            "disagreement": round(1 - top / len(latest), 6) if latest else 0.0}


def _project(row) -> dict:
    return {"id": row["id"], "name": row["name"], "task": row["task"],
            "config": ProjectConfig.of(row["task"], _loads(row["config"])), "created_at": row["created_at"]}


def _item(row) -> dict:
    return {"id": row["id"], "project_id": row["project_id"], "data": _loads(row["data"]),
            "source": _loads(row["source"]), "claims": row["claims"], "done": row["done"],
            "uncertainty": row["uncertainty"], "disagreement": row["disagreement"], "agreement": row["agreement"],
            "status": row["status"]}


def _prelabel(row) -> dict:
    return {"id": row["id"], "model": row["model"], "version": row["version"], "value": _loads(row["value"]),
            "score": row["score"], "created_at": row["created_at"]}


def open_label_store(url: str):
    """(engine, users, store) of the database at ``url``, its schema brought to the current revision."""
    from lightseek.db import connect, normalise_url, upgrade
    from lightseek.label.auth import Users

    engine = connect(normalise_url(url))
    upgrade(engine)
    return engine, Users(engine), LabelStore(engine)

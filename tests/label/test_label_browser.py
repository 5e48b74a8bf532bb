"""LabelHub end to end in a real headless Chromium against a real uvicorn server on SQLite: an
annotator signs in (after a wrong password), classifies a text with a model's pre-label shown,
tags spans in Chinese text past a character outside the BMP, corrects a model's draft answer;
a reviewer settles the items two annotators disagree on, reads the dashboard, downloads the
export, and `lightseek lora train` trains an adapter on it."""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time

import pytest

for _module, _why in [("sqlalchemy", "the platform extra"), ("argon2", "the label extra"),
                      ("fastapi", "the label extra"), ("jinja2", "the label extra"), ("multipart", "the label extra"),
                      ("sklearn", "the label extra"), ("statsmodels", "the label extra"),
                      ("krippendorff", "the label extra")]:
    pytest.importorskip(_module, reason=f"LabelHub needs {_module} ({_why}: pip install -e .[label,test])")
uvicorn = pytest.importorskip("uvicorn", reason="the server needs uvicorn (pip install -e .[serve])")
webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (pip install -e .[test])")

from browser_helpers import click_and_wait, headless_chromium  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as ec  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

from lightseek.adapters.store import read_adapter_meta  # noqa: E402
from lightseek.cli import main  # noqa: E402
from lightseek.label.store import open_label_store  # noqa: E402
from lightseek.label.web import build_label_app  # noqa: E402

PASSWORD = "correct horse"
# the tagged names come after 𠀋 (U+2000B) and 😀 (U+1F600): two UTF-16 units each, one Python character
SPAN_TEXT = "𠀋 记者😀报道：张伟住在北京。"
QA = [("What is the capital of France?", "Paris is the capital.", "Paris."),
      ("How many legs has a spider?", "Six legs.", "A spider has eight legs."),
      ("What colour is the sky?", "Blue.", "Blue on a clear day."),
      ("Who wrote Hamlet?", "Marlowe.", "Shakespeare wrote Hamlet."),
      ("What is two plus two?", "Four.", "Four."),
      ("Where does the sun rise?", "In the west.", "In the east."),
      ("What do bees make?", "Honey.", "Honey and wax."),
      ("How many days has a week?", "Seven.", "Seven days."),
      ("What is ice made of?", "Water.", "Frozen water."),
      ("Which is larger, a cat or a mouse?", "A mouse.", "A cat."),
      ("What do cows drink?", "Milk.", "Water."),
      ("What is the opposite of cold?", "Hot.", "Hot."),
      ("How many hours has a day?", "Twelve.", "Twenty-four."),
      ("What falls from clouds?", "Rain.", "Rain or snow."),
      ("What do you call a baby dog?", "A kitten.", "A puppy.")]


def utf16(text: str, i: int) -> int:
    """The browser's offset of Python's character offset ``i``."""
    return len(text[:i].encode("utf-16-le")) // 2


@pytest.fixture()
def labelhub(tmp_path):
    engine, users, store = open_label_store(tmp_path / "label.db")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(build_label_app(users, store), host="127.0.0.1", port=port,
                                        log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    while not srv.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", users, store
    srv.should_exit = True
    thread.join(timeout=5)
    engine.dispose()


@pytest.fixture()
def browser(tmp_path):
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    driver = headless_chromium(downloads)
    try:
        yield driver, downloads
    finally:
        driver.quit()


@pytest.mark.skipif(not (shutil.which("chromium") and shutil.which("chromedriver")),
                    reason="needs Debian's chromium and chromium-driver (.ci/run installs them)")
def test_annotate_review_export_and_train_in_a_real_browser(labelhub, browser, debug_checkpoint, tmp_path) -> None:
    url, users, store = labelhub
    driver, downloads = browser
    wait = WebDriverWait(driver, 10)
    ann, other, rev = (users.add(name, PASSWORD, role) for name, role in
                       [("ann", "annotator"), ("bo", "annotator"), ("rev", "reviewer")])
    ann_user, other_user = users.get(ann), users.get(other)
    third_user = users.get(users.add("cy", PASSWORD, "annotator"))

    topics = store.create_project("topics", "classify", {"labels": ["medical", "finance", "legal"]})
    store.add_items(topics, [{"text": "Take two tablets after meals and see your doctor if the fever stays."}])
    topic_item = store.items(topics)[0]["id"]
    store.add_prelabels(topics, [{"item_id": topic_item, "model": "router", "version": "v1",
                                  "value": {"labels": ["finance"]}, "score": 0.72}])
    prelabel = store.item(topic_item)["prelabels"][0]["id"]
    names = store.create_project("人名地名", "spans", {"labels": ["PER", "LOC"]})
    store.add_items(names, [{"text": SPAN_TEXT}])
    qa = store.create_project("问答", "qa", {})
    question, draft, _ = QA[0]
    store.add_items(qa, [{"question": question, "draft": draft}])
    triage = store.create_project("triage", "classify", {"labels": ["medical", "finance", "legal"], "overlap": 3})
    store.add_items(triage, [{"text": "The court fined the clinic for overbilling."},
                             {"text": "Interest rates on mortgages rose again."}])
    for pid in (topics, names, qa, triage):
        for uid in (ann, other, rev, third_user["id"]):
            store.add_member(pid, uid)
    # three annotators disagree on both triage items (two of three agree): both go to review
    for user, labels in [(ann_user, ["medical", "finance"]), (other_user, ["legal", "legal"]),
                         (third_user, ["medical", "legal"])]:
        for label in labels:
            store.annotate(store.next_item(triage, user)["id"], user, {"labels": [label]})
    assert [it["status"] for it in store.items(triage)] == ["review", "review"]

    def click(by, what):  # and wait for the page it leads to
        click_and_wait(driver, by, what)

    def sign_in(name: str, password: str = PASSWORD) -> None:
        driver.find_element(By.ID, "username").send_keys(name)
        driver.find_element(By.ID, "password").send_keys(password)
        click(By.ID, "signin")

    # 1. sign in: no session sends to /login; a wrong password says so and stays there
    driver.get(f"{url}/")
    assert driver.current_url == f"{url}/login"
    sign_in("ann", "not the password")
    assert driver.current_url == f"{url}/login"
    assert driver.find_element(By.ID, "error").text == "Wrong username or password."
    sign_in("ann")
    assert driver.current_url == f"{url}/"
    assert [a.text for a in driver.find_elements(By.CSS_SELECTOR, "#projects td:first-child a")] == \
        ["topics", "人名地名", "问答", "triage"]

    # 2. classify: the model's pre-label is shown and chosen; the annotator picks another label
    click(By.LINK_TEXT, "topics")
    click(By.ID, "annotate")
    shown = wait.until(ec.visibility_of_element_located((By.ID, "prelabels")))
    assert shown.text == 'Models suggest: router v1: {"labels":["finance"]} (0.72)'
    choices = [driver.find_element(By.ID, f"label-{i}") for i in range(3)]
    assert [c.is_selected() for c in choices] == [False, True, False]
    choices[0].click()
    assert [c.is_selected() for c in choices] == [True, False, False]
    driver.find_element(By.ID, "submit").click()
    wait.until(ec.visibility_of_element_located((By.ID, "done")))
    [a] = store.annotations(topics)
    assert (a["item_id"], a["user_id"], a["value"], a["prelabel_id"]) == (topic_item, ann, {"labels": ["medical"]},
                                                                         prelabel)
    assert a["seconds"] is not None and a["seconds"] >= 0

    # 3. spans in Chinese: the browser selects by UTF-16 offsets, the server stores code points
    driver.get(f"{url}/projects/{names}/annotate")
    text_el = wait.until(ec.visibility_of_element_located((By.ID, "text")))
    assert text_el.text == SPAN_TEXT
    assert driver.execute_script("const t = document.querySelector('#text'); "
                                 "return [t.childNodes.length, t.firstChild.nodeType];") == [1, 3]
    wanted = []
    for chars, label in [("张伟", "PER"), ("北京", "LOC")]:
        start = SPAN_TEXT.index(chars)
        wanted.append([start, start + len(chars), label])
        assert utf16(SPAN_TEXT, start) == start + 2  # the offsets the browser uses differ
        selected = driver.execute_script(
            "const node = document.querySelector('#text').firstChild, range = document.createRange();"
            "range.setStart(node, arguments[0]); range.setEnd(node, arguments[1]);"
            "const sel = window.getSelection(); sel.removeAllRanges(); sel.addRange(range); return sel.toString();",
            utf16(SPAN_TEXT, start), utf16(SPAN_TEXT, start + len(chars)))
        assert selected == chars
        Select(driver.find_element(By.ID, "span-label")).select_by_visible_text(label)
        before = len(driver.find_elements(By.CSS_SELECTOR, "#spans li"))
        driver.find_element(By.ID, "tag").click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#spans li")) == before + 1)
        assert driver.find_element(By.ID, "status").text == ""
    assert [li.text.removesuffix(" remove") for li in driver.find_elements(By.CSS_SELECTOR, "#spans li")] == \
        [f"{lab}: “{SPAN_TEXT[s:e]}” [{s}, {e})" for s, e, lab in wanted]
    assert [m.text for m in driver.find_elements(By.CSS_SELECTOR, "#preview mark")] == ["张伟", "北京"]
    driver.find_element(By.ID, "submit").click()
    wait.until(ec.visibility_of_element_located((By.ID, "done")))
    [a] = store.annotations(names)
    assert a["value"] == {"spans": sorted(wanted)}
    assert [SPAN_TEXT[s:e] for s, e, _ in a["value"]["spans"]] == ["张伟", "北京"]

    # 4. qa: the model's draft is in the answer box; the annotator rewrites it
    driver.get(f"{url}/projects/{qa}/annotate")
    answer = wait.until(ec.visibility_of_element_located((By.ID, "answer")))
    assert driver.find_element(By.ID, "question").text == question
    assert answer.get_attribute("value") == draft
    typed = "Paris is the capital of France."
    answer.clear()
    answer.send_keys(typed)
    driver.find_element(By.ID, "submit").click()
    wait.until(ec.visibility_of_element_located((By.ID, "done")))
    [a] = store.annotations(qa)
    assert a["value"] == {"answer": typed} and a["user_id"] == ann
    # more finished items for the export to train on, answered by the other annotator
    store.add_items(qa, [{"question": q, "draft": d} for q, d, _ in QA[1:]])
    for _, _, fixed in QA[1:]:
        store.annotate(store.next_item(qa, other_user)["id"], other_user, {"answer": fixed})
    assert {it["status"] for it in store.items(qa)} == {"complete"}

    click(By.ID, "logout")
    assert driver.current_url == f"{url}/login"
    driver.get(f"{url}/projects/{qa}/annotate")
    assert driver.current_url == f"{url}/login"  # the session is over

    # 5. review: accept one disagreement, adjudicate the other with a value typed as JSON
    sign_in("rev")
    progress = {r.find_element(By.TAG_NAME, "a").text: r.find_elements(By.TAG_NAME, "td")[2].text
                for r in driver.find_elements(By.CSS_SELECTOR, "#projects tr")}
    assert progress == {"topics": "1 / 1 finished", "人名地名": "1 / 1 finished",
                        "问答": f"{len(QA)} / {len(QA)} finished", "triage": "0 / 2 finished"}
    driver.get(f"{url}/projects/{triage}/review")
    cards = {int(c.get_attribute("data-item")): c for c in driver.find_elements(By.CSS_SELECTOR, ".review-item")}
    first, second = (it["id"] for it in store.items(triage))
    assert sorted(cards) == [first, second]
    cards[first].find_element(By.CSS_SELECTOR, ".accept").click()
    wait.until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, f'[data-item="{first}"] .result'), "accepted"))
    cards[second].find_element(By.CSS_SELECTOR, ".adjudicate-value").send_keys('{"labels": ["finance"]}')
    cards[second].find_element(By.CSS_SELECTOR, ".adjudicate").click()
    wait.until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, f'[data-item="{second}"] .result'), "adjudicated"))
    assert [it["status"] for it in store.items(triage)] == ["reviewed", "reviewed"]
    reviews = store.reviews(triage)
    assert (reviews[first]["decision"], reviews[first]["value"]) == ("accept", {"labels": ["medical"]})
    assert (reviews[second]["decision"], reviews[second]["value"]) == ("adjudicate", {"labels": ["finance"]})
    assert (reviews[first]["reviewer_id"], reviews[second]["reviewer_id"]) == (rev, rev)

    # the dashboard: progress, charts drawn on the server, the agreement table
    driver.get(f"{url}/projects/{triage}")
    assert driver.find_element(By.ID, "progress").text.startswith("2 of 2 items finished (100.0%), 6 annotations")
    charts = driver.find_elements(By.CSS_SELECTOR, "svg.chart")
    assert {c.get_attribute("aria-label") for c in charts} >= {"Items by status", "Label distribution"}
    rows = {r.find_element(By.TAG_NAME, "th").text: r.find_element(By.TAG_NAME, "td").text
            for r in driver.find_elements(By.CSS_SELECTOR, "#agreement tr")}
    assert rows["items_with_overlap"] == "2" and "krippendorff_alpha" in rows and "fleiss_kappa" in rows

    # 6. export: the dashboard's form, as a download (the name is the project's, in Chinese)
    driver.get(f"{url}/projects/{qa}")
    assert driver.find_elements(By.CSS_SELECTOR, "svg.chart") and driver.find_element(By.ID, "agreement")
    Select(driver.find_element(By.ID, "format")).select_by_visible_text("messages")
    driver.find_element(By.CSS_SELECTOR, "#export button").click()
    exported = downloads / "问答-messages.jsonl"
    WebDriverWait(driver, 15).until(lambda _: exported.exists(),
                                    message=f"{exported.name} was not downloaded (see the server's log)")
    records = [json.loads(line) for line in exported.read_text(encoding="utf-8").splitlines()]
    assert len(records) == len(QA)
    mine = next(r for r in records if r["messages"][0]["content"] == question)
    assert mine["messages"][1] == {"role": "assistant", "content": typed}
    assert [x["user"] for x in mine["labelhub"]["annotators"]] == ["ann"]
    assert {r["messages"][1]["content"] for r in records} == {typed, *(fixed for _, _, fixed in QA[1:])}
    # the same export fetched by the page with its session: what the browser downloaded is all of it
    fetched = driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch(arguments[0], {credentials: 'same-origin'}).then(r => r.text()).then(done, e => done(String(e)));",
        f"/api/projects/{qa}/export?format=messages")
    assert fetched == exported.read_text(encoding="utf-8")

    run = tmp_path / "adapters" / "labelhub"
    # 15 records: a larger validation share than the default 0.1, so that neither split is empty
    assert main(["lora", "train", "--base", str(debug_checkpoint), "--data", str(exported), "--name", "labelhub",
                 f"--out_dir={run}", "--data.val_fraction=0.3", "--train.steps=2", "--train.batch_size=2",
                 "--train.seq_len=64", "--train.eval_every=2", "--train.plots=false", "--quiet"]) == 0
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    meta = read_adapter_meta(run / "adapter")
    assert meta["name"] == "labelhub" and meta["data"]["files"] == [str(exported)]
    assert meta["data"]["train_examples"] + meta["data"]["val_examples"] == len(QA) and meta["metrics"]["steps"] == 2

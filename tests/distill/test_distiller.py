"""The DataDistiller: provenance, same seed -> same bytes, resume after a kill with nothing lost
or duplicated, rejections recorded, routing by domain, and the OpenAI-endpoint expert."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import ClassVar

import pytest
from conftest import corpus_text

from lightseek.config import build
from lightseek.distill.distiller import DistillerConfig, distill_data
from lightseek.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    lines = [ln.strip() for ln in corpus_text().splitlines() if len(ln.strip()) > 25][:10]
    f = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    f.write_text("".join(json.dumps({"prompt": ln}) + "\n" for ln in lines), encoding="utf-8")
    return f


def _cfg(out, inputs, expert, *extra: str) -> DistillerConfig:
    return build(DistillerConfig, None, [f"--out={out}", f"--inputs=[{inputs}]", f"--experts.*={expert}",
                                         "--generate.max_tokens=6", "--chunk=4", "--seed=3", *extra])


def _files(out):
    return {name: (out / name).read_bytes() for name in ("data.jsonl", "rejected.jsonl", "manifest.json")}


def test_records_carry_provenance_and_same_seed_gives_same_bytes(tmp_path, prompts, debug_checkpoint):
    a = distill_data(_cfg(tmp_path / "a", prompts, debug_checkpoint, f"--refiner={debug_checkpoint}"),
                     show_progress=False)
    distill_data(_cfg(tmp_path / "b", prompts, debug_checkpoint, f"--refiner={debug_checkpoint}"),
                     show_progress=False)
    assert a["inputs"] == 10 and a["kept"] + a["rejected"] == 10 and a["kept"] > 0
    fa, fb = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert fa["data.jsonl"] == fb["data.jsonl"] and fa["rejected.jsonl"] == fb["rejected.jsonl"]
    rec = json.loads(fa["data.jsonl"].splitlines()[0])
    assert [m["role"] for m in rec["messages"]] == ["user", "assistant"]
    assert rec["source"]["file"] == str(prompts) and len(rec["source"]["sha256"]) == 64
    assert rec["domain"] == "general" and rec["confidence"] == 1.0
    assert rec["expert"]["sha256"] and rec["refiner"]["mode"] == "refine" and "expert_answer" in rec
    assert rec["prompts"]["expert"] == "{text}" and "{answer}" in rec["prompts"]["refiner"]
    # another run seed gives other samples
    c = distill_data(_cfg(tmp_path / "c", prompts, debug_checkpoint, "--seed=4"), show_progress=False)
    assert c["inputs"] == 10 and _files(tmp_path / "c")["data.jsonl"] != fa["data.jsonl"]


def test_the_output_feeds_lora_and_sft_readers(tmp_path, prompts, debug_checkpoint):
    from lightseek.data.instruct import load_instructions

    distill_data(_cfg(tmp_path, prompts, debug_checkpoint), show_progress=False)
    data = load_instructions([tmp_path / "data.jsonl"])
    assert len(data.examples) == len((tmp_path / "data.jsonl").read_text().splitlines()) > 0


def test_a_killed_run_resumes_with_nothing_lost_or_duplicated(tmp_path, prompts, debug_checkpoint, monkeypatch):
    from lightseek.distill import generators

    whole = tmp_path / "whole"
    distill_data(_cfg(whole, prompts, debug_checkpoint, f"--refiner={debug_checkpoint}"), show_progress=False)

    calls = {"n": 0}
    real = generators.LocalGenerator.generate

    def dies_on_third_batch(self, ps, seeds):
        calls["n"] += 1
        if calls["n"] == 3:  # expert chunk 1, refiner chunk 1, then the kill
            raise KeyboardInterrupt
        return real(self, ps, seeds)

    killed = tmp_path / "killed"
    monkeypatch.setattr(generators.LocalGenerator, "generate", dies_on_third_batch)
    with pytest.raises(KeyboardInterrupt):
        distill_data(_cfg(killed, prompts, debug_checkpoint, f"--refiner={debug_checkpoint}"), show_progress=False)
    assert not (killed / "data.jsonl").exists()
    monkeypatch.setattr(generators.LocalGenerator, "generate", real)
    # a kill mid-write leaves half a line at the end of a cache file: it is ignored and redone
    cache = next((killed / "cache").glob("expert-*.jsonl"))
    with cache.open("a") as f:
        f.write('{"key": "half a li')
    resumed = distill_data(_cfg(killed, prompts, debug_checkpoint, f"--refiner={debug_checkpoint}"),
                           show_progress=False)
    assert _files(killed)["data.jsonl"] == _files(whole)["data.jsonl"]
    assert _files(killed)["rejected.jsonl"] == _files(whole)["rejected.jsonl"]
    # only the 6 inputs after the first chunk were generated again (expert + refiner each)
    assert resumed["generated_now"] <= 12
    keys = [json.loads(ln)["key"] for ln in cache.read_text().splitlines() if ln.startswith('{"key": "') and ln.endswith("}")]
    assert len(keys) == len(set(keys)) == 10


def test_judge_rejections_and_unrouted_domains_are_recorded(tmp_path, prompts, debug_checkpoint):
    r = distill_data(_cfg(tmp_path / "j", prompts, debug_checkpoint, f"--refiner={debug_checkpoint}", "--mode=judge",
                          "--prompts.accept=^never-accepted$"), show_progress=False)
    assert r["kept"] == 0 and r["rejected"] == 10
    rows = [json.loads(ln) for ln in (tmp_path / "j" / "rejected.jsonl").read_text().splitlines()]
    assert {row["stage"] for row in rows} <= {"judge", "expert"} and any(row["stage"] == "judge" for row in rows)
    assert all("reason" in row and row["source"]["sha256"] for row in rows)

    cfg = build(DistillerConfig, None, [f"--out={tmp_path / 'r'}", f"--inputs=[{prompts}]", "--domain=legal",
                                        f"--experts.medical={debug_checkpoint}"])
    r = distill_data(cfg, show_progress=False)
    assert r["rejected_by_stage"] == {"route": 10}


def test_bad_configs_are_clear_errors(tmp_path, prompts, debug_checkpoint):
    with pytest.raises(ConfigError, match="experts"):
        build(DistillerConfig, None, [f"--inputs=[{prompts}]"])
    with pytest.raises(ConfigError, match=r"experts.medical: endpoint .* needs its model after '#'"):
        build(DistillerConfig, None, [f"--inputs=[{prompts}]", "--experts.medical=http://127.0.0.1:8000/v1"])
    with pytest.raises(ConfigError, match="prompt template"):
        distill_data(_cfg(tmp_path, prompts, debug_checkpoint, "--prompts.prompt=Answer {question}"),
                     show_progress=False)
    with pytest.raises(DataError, match="matches no"):
        distill_data(_cfg(tmp_path, tmp_path / "missing-dir-*.jsonl", debug_checkpoint), show_progress=False)
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps({"prompt": "   "}) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match="no inputs with text"):
        distill_data(_cfg(tmp_path, empty, debug_checkpoint), show_progress=False)


class _Fake(BaseHTTPRequestHandler):
    seen: ClassVar[list] = []
    fail = False
    reply: ClassVar[str | None] = None  # the expert's answer (default: its seed)

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Fake.seen.append((self.path, body))
        if _Fake.fail:
            self.send_response(503)
            self.end_headers()
            self.wfile.write(b'{"error": {"message": "loading"}}')
            return
        content = _Fake.reply if _Fake.reply is not None else f" seed {body['seed']} "
        answer = {"choices": [{"message": {"role": "assistant", "content": content},
                               "finish_reason": "stop"}], "usage": {"completion_tokens": 3}}
        data = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_an_openai_compatible_endpoint_can_be_the_expert(tmp_path, prompts):
    server = HTTPServer(("127.0.0.1", 0), _Fake)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/v1#med-expert"
        r = distill_data(_cfg(tmp_path / "e", prompts, url), show_progress=False)
        assert r["kept"] == 10
        path, body = _Fake.seen[0]
        assert path == "/v1/chat/completions" and body["model"] == "med-expert"
        assert body["messages"][0]["role"] == "user" and body["max_tokens"] == 6
        rec = json.loads((tmp_path / "e" / "data.jsonl").read_text().splitlines()[0])
        assert rec["messages"][1]["content"] == f"seed {rec['seed']}" and rec["expert"]["kind"] == "endpoint"
        _Fake.fail = True
        with pytest.raises(DataError, match="answered 503"):
            distill_data(_cfg(tmp_path / "f", prompts, url), show_progress=False)
    finally:
        _Fake.fail = False
        server.shutdown()


def test_a_scorer_records_each_answers_likelihood_and_can_reject(tmp_path, prompts, debug_checkpoint):
    import torch

    from lightseek.data.chat import encode_chat
    from lightseek.distill.generators import answer_logprob
    from lightseek.distill.models import load_local

    a = distill_data(_cfg(tmp_path / "a", prompts, debug_checkpoint, f"--scorer={debug_checkpoint}"),
                     show_progress=False)
    rows = [json.loads(ln) for ln in (tmp_path / "a" / "data.jsonl").read_text().splitlines()]
    assert a["kept"] == len(rows) > 0
    local = load_local(str(debug_checkpoint))
    for rec in rows[:3]:
        prompt, answer = (m["content"] for m in rec["messages"])
        lp = rec["quality"]["logprob"]
        assert lp < 0 and lp == round(answer_logprob(local, prompt, answer), 4)
        # the same as the model's own loss on the answer's tokens
        ids, learn = encode_chat(local.tokenizer, rec["messages"])
        x = torch.tensor([ids])
        targets = torch.tensor([[t if m else -100 for t, m in zip(ids[1:], learn[1:])] + [-100]])
        with torch.no_grad():
            assert -float(local.model(x, targets_BT=targets).loss) == pytest.approx(lp, abs=1e-3)
    assert rows[0]["quality"]["scorer"]["sha256"]
    b = distill_data(_cfg(tmp_path / "b", prompts, debug_checkpoint, f"--scorer={debug_checkpoint}",
                          "--min_logprob=0"), show_progress=False)
    assert b["kept"] == 0 and b["rejected_by_stage"].get("score") == a["kept"]
    with pytest.raises(ConfigError, match="scorer: a local checkpoint"):
        _cfg(tmp_path, prompts, debug_checkpoint, "--scorer=http://127.0.0.1:1/v1#m")


def test_repetition_measures_loops_in_words_and_chinese_characters():
    from lightseek.distill.distiller import repetition

    assert repetition("Glaucoma is a group of eye diseases that damage the optic nerve.") == 0.0
    assert repetition("the cat sat on the mat " * 10) > 0.8
    assert repetition("青光眼是一组损害视神经的眼病。") == 0.0
    assert repetition("患者应该多喝水" * 8) > 0.8
    assert repetition("too short") == 0.0


def test_loops_and_overlong_answers_are_rejected_with_their_reason(tmp_path, prompts):
    server = HTTPServer(("127.0.0.1", 0), _Fake)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/v1#expert"
    try:
        _Fake.reply = "A generator is a function that returns a generator. " * 6
        r = distill_data(_cfg(tmp_path / "loop", prompts, url), show_progress=False)
        assert r["kept"] == 0 and r["rejected_by_stage"] == {"expert": 10}
        row = json.loads((tmp_path / "loop" / "rejected.jsonl").read_text().splitlines()[0])
        assert "repeats itself" in row["reason"] and row["answer"] == _Fake.reply.strip()
        assert distill_data(_cfg(tmp_path / "off", prompts, url, "--max_repetition=1"),
                            show_progress=False)["kept"] == 10
        r = distill_data(_cfg(tmp_path / "long", prompts, url, "--max_repetition=1", "--max_chars=100"),
                         show_progress=False)
        assert r["kept"] == 0 and "max_chars 100" in (tmp_path / "long" / "rejected.jsonl").read_text()
    finally:
        _Fake.reply = None
        server.shutdown()
    with pytest.raises(ConfigError, match="max_repetition"):
        _cfg(tmp_path, prompts, url, "--max_repetition=1.5")
    with pytest.raises(ConfigError, match="max_chars"):
        _cfg(tmp_path, prompts, url, "--min_chars=50", "--max_chars=10")


def test_a_domain_classifier_routes_each_input_to_its_experts(tmp_path, debug_checkpoint):
    """classify -> expert: inputs the classifier calls medical go to the medical expert, the rest
    to the fallback; every record keeps the domain and the classifier's confidence."""
    from lightseek.data.domains import DomainClassifier, DomainConfig

    med = ["the patient has a fever and the doctor prescribed antibiotics for the infection",
           "symptoms of diabetes include thirst; the clinic measures blood sugar and insulin",
           "the nurse checked the patient's blood pressure before surgery in the hospital"]
    fin = ["the bank raised interest rates and the stock market fell as investors sold shares",
           "quarterly earnings beat forecasts and the company paid a dividend to shareholders",
           "bond yields rose while the currency weakened against the dollar on inflation data"]
    clf = DomainClassifier.fit(med * 6 + fin * 6, ["medical"] * 18 + ["finance"] * 18,
                               DomainConfig(min_df=1, threshold=0.0))
    clf.save(tmp_path / "clf")
    inputs = tmp_path / "in.jsonl"
    inputs.write_text("".join(json.dumps({"text": t}) + "\n" for t in
                              ["what antibiotics treat an infection in a hospital patient?",
                               "how do interest rates move the stock market and bond yields?"]), encoding="utf-8")
    cfg = build(DistillerConfig, None, [f"--out={tmp_path / 'o'}", f"--inputs=[{inputs}]",
                                        f"--classifier={tmp_path / 'clf'}", f"--experts.medical={debug_checkpoint}",
                                        "--generate.max_tokens=4"])
    r = distill_data(cfg, show_progress=False)
    assert r["by_domain"]["medical"]["kept"] + r["by_domain"]["medical"]["rejected"] == 1
    rows = [json.loads(ln) for f in ("data.jsonl", "rejected.jsonl")
            for ln in (tmp_path / "o" / f).read_text().splitlines()]
    by_domain = {row["domain"]: row for row in rows}
    assert set(by_domain) == {"medical", "finance"}
    assert by_domain["finance"]["stage"] == "route"  # no finance expert and no '*' fallback
    assert 0.5 < by_domain["medical"]["confidence"] <= 1.0
    assert r["classifier"]["sha256"]


def test_max_per_source_takes_the_first_inputs_of_each_file(tmp_path, prompts, debug_checkpoint):
    other = tmp_path / "other.jsonl"
    other.write_text("".join(json.dumps({"prompt": f"question number {i}"}) + "\n" for i in range(5)), encoding="utf-8")
    cfg = build(DistillerConfig, None, [f"--out={tmp_path / 'o'}", f"--inputs=[{prompts},{other}]",
                                        f"--experts.*={debug_checkpoint}", "--generate.max_tokens=2",
                                        "--max_per_source=2"])
    distill_data(cfg, show_progress=False)
    rows = [json.loads(ln) for f in ("data.jsonl", "rejected.jsonl") for ln in (tmp_path / "o" / f).read_text().splitlines()]
    assert sorted((r["source"]["file"], r["source"]["index"]) for r in rows) == [
        (str(prompts), 0), (str(prompts), 1), (str(other), 0), (str(other), 1)]

"""The `lightseek` command, run for real in subprocesses: help on a core install, one-line
errors for bad input that leave the user's files alone, and the happy paths on a tiny
checkpoint trained once for this module."""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

TRAIN_ARGS = ["--preset", "debug", "--tokenizer.vocab_size", "300", "--train.steps", "3",
              "--train.batch_size", "2", "--train.seq_len", "32", "--train.eval_every", "3",
              "--train.ckpt_every", "3", "--train.eval_batches", "2", "--train.plots", "false",
              "--quiet"]

# --- helpers ---------------------------------------------------------------------------------


def run_cli(cwd: Path, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lightseek", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=180)


def run_all(cwd: Path, *argvs) -> list[subprocess.CompletedProcess]:
    """Independent commands, a few at a time: each spends most of its time importing torch."""
    with ThreadPoolExecutor(min(len(argvs), 3)) as pool:
        return list(pool.map(lambda argv: run_cli(cwd, *argv), argvs))


def error_line(result: subprocess.CompletedProcess, command: str, *needles: str) -> str:
    """Assert `result` is a user error: exit 2 and exactly one stderr line
    'lightseek COMMAND: error: ...' holding every needle."""
    assert result.returncode == 2, f"exit {result.returncode}\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert re.fullmatch(rf"lightseek {command}: error: \S.*", lines[0]), lines[0]
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


def snapshot(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder`, by relative path."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def english_text(n_bytes: int = 50_000, seed: int = 0) -> str:
    rng = random.Random(seed)
    subjects = ["The cat", "A dog", "My neighbour", "The old sailor", "A young teacher",
                "The river", "Our city", "The small bird", "A tired farmer", "Her brother"]
    verbs = ["walks to", "looks at", "dreams about", "sings near", "runs past", "writes about",
             "waits for", "paints", "remembers", "follows", "talks about"]
    objects = ["the quiet market", "a green hill", "the long road", "an open window",
               "the busy harbour", "a warm kitchen", "the dark forest", "a red bicycle",
               "the stone bridge", "an empty field"]
    endings = ["every morning.", "before the rain.", "with great care.", "after dinner.",
               "in the winter.", "without a word.", "on a sunny day.", "when the bells ring."]
    out, size = [], 0
    while size < n_bytes:
        line = " ".join(rng.choice(words) for words in (subjects, verbs, objects, endings))
        if rng.random() < 0.1:
            line += "\n"  # paragraph break
        out.append(line)
        size += len(line) + 1
    return "\n".join(out) + "\n"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text(english_text(), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, corpus) -> Path:
    """A run folder (RUN/checkpoint, RUN/data) trained for 3 steps; tests copy it to damage it."""
    root = tmp_path_factory.mktemp("cli_run")
    shutil.copy(corpus, root / "corpus.txt")
    r = run_cli(root, "train", *TRAIN_ARGS, "--data.inputs=[corpus.txt]", "--out_dir", "RUN")
    assert r.returncode == 0, r.stderr
    assert (root / "RUN" / "checkpoint" / "model.safetensors").is_file()
    return root / "RUN"


GENERATE = ["--prompt", "The ", "--max-new-tokens", "10"]
ON_CHECKPOINT = {  # name: (run from the run's own folder?, arguments after the checkpoint)
    "greedy": (False, ["generate", *GENERATE, "--temperature", "0"]),
    "seed1": (False, ["generate", *GENERATE, "--temperature", "1.0", "--seed", "1"]),
    "seed1_again": (False, ["generate", *GENERATE, "--temperature", "1.0", "--seed", "1"]),
    "seed2": (False, ["generate", *GENERATE, "--temperature", "1.0", "--seed", "2"]),
    "bad_temperature": (False, ["generate", *GENERATE, "--temperature", "-1"]),
    "bad_top_p": (False, ["generate", *GENERATE, "--top-p", "0"]),
    "eval": (True, ["eval", "--routing"]),
    "eval_elsewhere": (False, ["eval"]),
    "info": (False, ["info"]),
}


@pytest.fixture(scope="module")
def on_checkpoint(run_dir, tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    """Every ON_CHECKPOINT command on the fixture run, run a few at a time to save time. From
    the run's own folder the checkpoint is given as `RUN`, elsewhere as an absolute path."""
    elsewhere = tmp_path_factory.mktemp("elsewhere")

    def run(name: str) -> subprocess.CompletedProcess:
        at_home, (command, *rest) = ON_CHECKPOINT[name]
        if at_home:
            return run_cli(run_dir.parent, command, run_dir.name, *rest)
        return run_cli(elsewhere, command, run_dir, *rest)

    with ThreadPoolExecutor(3) as pool:
        return dict(zip(ON_CHECKPOINT, pool.map(run, ON_CHECKPOINT)))


# --- 1. a core install -----------------------------------------------------------------------

HELP_SCRIPT = r"""
import contextlib, importlib, io, json, sys
for name in ("matplotlib", "pytest"):
    sys.modules[name] = None  # as if the extras were not installed: importing them fails
blocked = []
for name in ("matplotlib", "pytest"):
    try:
        importlib.import_module(name)
    except ImportError:
        blocked.append(name)
from lightseek.cli import main
results = {}
for argv in (["--help"], ["train", "--help"], ["data", "prepare", "--help"],
             ["generate", "--help"]):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code
    results[" ".join(argv)] = [code, out.getvalue()]
print(json.dumps({"blocked": blocked, "torch": "torch" in sys.modules, "results": results}))
"""


def test_help_needs_only_the_core_install_and_not_torch(tmp_path):
    r = subprocess.run([sys.executable, "-c", HELP_SCRIPT], cwd=tmp_path, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["blocked"] == ["matplotlib", "pytest"]
    assert report["torch"] is False, "`lightseek --help` imported torch"
    for argv, (code, text) in report["results"].items():
        assert code == 0, (argv, code)
        assert text.startswith("usage: lightseek"), (argv, text[:200])
    assert "quickstart" in report["results"]["--help"][1]
    assert "--resume" in report["results"]["train --help"][1]
    assert "--overwrite" in report["results"]["data prepare --help"][1]
    assert "--temperature" in report["results"]["generate --help"][1]


def test_info_of_the_debug_preset(tmp_path):
    r = run_cli(tmp_path, "info", "--preset", "debug")
    assert r.returncode == 0, r.stderr
    assert "2 layers (1 dense), dim 64" in r.stdout
    assert "8 routed x 32 wide + 1 shared" in r.stdout
    assert re.search(r"parameters\s+[\d,]+ total, [\d,]+ active per token", r.stdout), r.stdout


# --- 2. bad input: one line, names the culprit, nothing overwritten ---------------------------

def prepare(inputs: str, out: str = "OUT") -> list[str]:
    return ["data", "prepare", inputs, "--out", out, "--tokenizer.vocab_size", "300"]


def test_prepare_an_empty_corpus(tmp_path):
    (tmp_path / "corpus").mkdir()
    for name in ("empty.txt", "empty.jsonl"):  # the folder's only files: both readers
        (tmp_path / "corpus" / name).write_bytes(b"")
    error_line(run_cli(tmp_path, *prepare("corpus")), "data prepare", "empty")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus"]  # no OUT, no temp folder


def test_prepare_names_a_non_utf8_file_and_a_missing_path(tmp_path):
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "a_good.txt").write_text(english_text(2000), encoding="utf-8")
    (tmp_path / "corpus" / "b_bad.txt").write_bytes(b"hello \xff\xfe world")
    bad, missing = run_all(tmp_path, prepare("corpus"), prepare("nothere.txt"))
    error_line(bad, "data prepare", "b_bad.txt", "UTF-8")
    error_line(missing, "data prepare", "nothere.txt")
    assert not (tmp_path / "OUT").exists()


def test_prepare_an_unreadable_file(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text(english_text(2000), encoding="utf-8")
    secret.chmod(0)
    try:
        if os.access(secret, os.R_OK):
            pytest.skip("running as root: chmod 000 does not stop this process reading the file")
        error_line(run_cli(tmp_path, *prepare("secret.txt")), "data prepare", "secret.txt")
        assert not (tmp_path / "OUT").exists()
    finally:
        secret.chmod(0o644)


def test_prepare_into_a_non_empty_folder_keeps_it(tmp_path, corpus):
    out = tmp_path / "OUT"
    out.mkdir()
    (out / "notes.txt").write_bytes(b"my own notes\n")
    before = snapshot(out)
    error_line(run_cli(tmp_path, *prepare(str(corpus))), "data prepare", "OUT", "not empty")
    assert snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["OUT"]


def test_missing_checkpoint_folder(tmp_path):
    results = run_all(tmp_path, ["generate", "nothere", "--prompt", "hi"], ["eval", "nothere"],
                      ["info", "nothere"])
    for command, r in zip(["generate", "eval", "info"], results):
        error_line(r, command, "nothere", "not found")


def _drop_weights(ckpt: Path) -> str:
    (ckpt / "model.safetensors").unlink()
    return "model.safetensors"


def _truncate_weights(ckpt: Path) -> str:
    f = ckpt / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    return "model.safetensors"


def _corrupt_config(ckpt: Path) -> str:
    f = ckpt / "config.json"
    f.write_text(f.read_text(encoding="utf-8")[:40], encoding="utf-8")  # cut mid-JSON
    return "config.json"


def test_damaged_checkpoints(tmp_path, run_dir):
    """Each damage met by a different command (all three share the loader: see the test above)."""
    cases = [("no_weights", _drop_weights, ["eval"]),
             ("truncated", _truncate_weights, ["generate", "--prompt", "hi"]),
             ("bad_config", _corrupt_config, ["info"])]
    culprits, before = {}, {}
    for name, damage, _ in cases:
        shutil.copytree(run_dir / "checkpoint", tmp_path / name)
        culprits[name] = damage(tmp_path / name)
        before[name] = snapshot(tmp_path / name)
    results = run_all(tmp_path, *[[cmd[0], name, *cmd[1:]] for name, _, cmd in cases])
    for (name, _, cmd), r in zip(cases, results):
        error_line(r, cmd[0], name, culprits[name])
        assert snapshot(tmp_path / name) == before[name]


RECIPES = {
    "unknown_key.yaml": "preset: debug\ntrain:\n  steps: 3\n  warmup: 1\n",
    "broken.yaml": "train: [1, 2\n  lr: :\n",
}

CONFIG_ERRORS = {
    "unknown-key": (["--train.lrr=1"], ["'train.lrr'", "did you mean 'train.lr'?"]),
    "not-an-integer": (["--train.steps=abc"], ["train.steps", "abc"]),
    "not-a-bool": (["--model.balance_bias=maybe"], ["model.balance_bias", "maybe"]),
    "unknown-preset": (["--preset", "nope"], ["preset", "'nope'"]),
    "recipe-unknown-key": (["--config", "unknown_key.yaml"],
                           ["'train.warmup'", "'train.warmup_steps'"]),
    "missing-recipe": (["--config", "missing.yaml"], ["missing.yaml", "not found"]),
    "invalid-yaml": (["--config", "broken.yaml"], ["broken.yaml", "not valid YAML"]),
}


def write_recipes(folder: Path) -> None:
    for name, text in RECIPES.items():
        (folder / name).write_text(text, encoding="utf-8")


@pytest.mark.parametrize("case", list(CONFIG_ERRORS))
def test_config_errors(tmp_path, case):
    """Through `config --show`, which needs no torch (fast); `train` shares the path (next test)."""
    args, needles = CONFIG_ERRORS[case]
    write_recipes(tmp_path)
    error_line(run_cli(tmp_path, "config", "--show", *args), "config", *needles)


def test_train_reports_config_errors_before_writing(tmp_path, corpus):
    args, needles = CONFIG_ERRORS["unknown-key"]
    r = run_cli(tmp_path, "train", *args, f"--data.inputs=[{corpus}]", "--out_dir", "RUN")
    error_line(r, "train", *needles)
    assert list(tmp_path.iterdir()) == []


def test_train_keeps_a_checkpoint_and_resume_needs_one(tmp_path, run_dir, corpus):
    shutil.copytree(run_dir, tmp_path / "RUN")
    before = snapshot(tmp_path / "RUN")
    assert "checkpoint/model.safetensors" in before
    train = ["train", *TRAIN_ARGS, f"--data.inputs=[{corpus}]", "--out_dir"]
    again, resume = run_all(tmp_path, [*train, "RUN"], [*train, "NEW", "--resume"])
    error_line(again, "train", "RUN", "--resume")  # no --resume: refuse, touch nothing
    assert snapshot(tmp_path / "RUN") == before
    error_line(resume, "train", "--resume", "NEW")
    assert not (tmp_path / "NEW").exists()


@pytest.mark.parametrize("name, key, value", [("bad_temperature", "temperature", "-1"),
                                             ("bad_top_p", "top_p", "0")])
def test_generate_rejects_bad_sampling(on_checkpoint, name, key, value):
    error_line(on_checkpoint[name], "generate", key, value)
    assert on_checkpoint[name].stdout == ""


# --- 3. happy paths ---------------------------------------------------------------------------

def test_generate_greedy(on_checkpoint):
    r = on_checkpoint["greedy"]
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    assert r.stdout.startswith("The ") and r.stdout.endswith("\n")
    assert len(r.stdout) > len("The \n"), "no token was generated"


def test_generate_with_a_seed_is_reproducible(on_checkpoint):
    first, again, other = (on_checkpoint[k] for k in ("seed1", "seed1_again", "seed2"))
    for r in (first, again, other):
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith("The ")
    assert first.stdout == again.stdout
    assert first.stdout != other.stdout, "the seed has no effect"


def test_eval_with_routing_table(on_checkpoint):
    r = on_checkpoint["eval"]
    assert r.returncode == 0, r.stderr
    m = re.search(r"loss (\d+\.\d+)\s+perplexity (\d+\.\d+)\s+tokens ([\d,]+)", r.stdout)
    assert m, r.stdout
    loss, ppl = float(m[1]), float(m[2])
    assert math.isclose(math.exp(loss), ppl, rel_tol=0.01) and int(m[3].replace(",", "")) > 0
    bpb = float(re.search(r"bits/byte (\d+\.\d+)", r.stdout)[1])
    assert 0 < bpb < loss / math.log(2)  # a token holds more than one byte of this text on average
    lines = r.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:3] == ["layer", "avg", "k"])
    rows = [line.split() for line in lines[header + 1:]]
    assert [row[0] for row in rows] == ["1"], r.stdout  # debug preset: layer 0 dense, layer 1 MoE
    avg_k, shares = float(rows[0][1]), [float(v) for v in rows[0][5:]]
    assert 1.0 <= avg_k <= 4.0
    assert len(shares) == 8 and abs(sum(shares) - 100) < 1, rows[0]


def test_eval_from_another_folder(on_checkpoint):
    r = on_checkpoint["eval_elsewhere"]
    assert r.returncode == 0, r.stderr


def test_info_of_a_checkpoint(on_checkpoint, run_dir):
    r = on_checkpoint["info"]
    assert r.returncode == 0, r.stderr
    m = re.search(r"parameters\s+([\d,]+) total, ([\d,]+) active per token", r.stdout)
    assert m, r.stdout
    total, active = (int(g.replace(",", "")) for g in m.groups())
    assert 0 < active < total
    vocab = json.loads((run_dir / "checkpoint" / "config.json").read_text())["model"]["vocab_size"]
    assert f"vocab {vocab}," in r.stdout and "dynamic, target k 2.5" in r.stdout


def test_config_lists_and_shows_keys(tmp_path):
    listing = run_cli(tmp_path, "config")
    assert listing.returncode == 0, listing.stderr
    assert re.search(r"^train\.lr\s+0\.003\s+Peak learning rate", listing.stdout, re.MULTILINE), \
        listing.stdout
    shown = run_cli(tmp_path, "config", "--show", "--preset", "debug", "--train.lr=3e-4",
                    "--train.seq_len", "64")
    assert shown.returncode == 0, shown.stderr
    cfg = yaml.safe_load(shown.stdout)
    assert cfg["train"]["lr"] == 3e-4 and cfg["preset"] == "debug" and cfg["model"]["dim"] == 64


@pytest.mark.parametrize("kind, key", [("distill", r"kd\.temperature"), ("distiller", r"refiner"),
                                       ("pipeline", r"dedup\.threshold"), ("quant", r"quant\.group_size"),
                                       ("finetune", r"lora\.rank")])
def test_config_lists_every_commands_keys(tmp_path, kind, key):
    listing = run_cli(tmp_path, "config", "--for", kind)
    assert listing.returncode == 0, listing.stderr
    assert re.search(rf"^{key}\s", listing.stdout, re.MULTILINE), listing.stdout


def test_config_shows_a_distill_config_with_overrides(tmp_path):
    shown = run_cli(tmp_path, "config", "--for", "distill", "--show", "--kd.temperature=2", "--teachers.medical=M")
    cfg = yaml.safe_load(shown.stdout)
    assert cfg["kd"]["temperature"] == 2.0 and cfg["teachers"] == {"medical": "M"}


def test_tokenizer_train_writes_tokenizer_json(tmp_path, corpus):
    from lightseek.data.tokenizer import Tokenizer

    r = run_cli(tmp_path, "tokenizer", "train", corpus, "--out", "T",
                "--tokenizer.vocab_size", "300")
    assert r.returncode == 0, r.stderr
    path = tmp_path / "T" / "tokenizer.json"
    assert path.is_file() and str(Path("T") / "tokenizer.json") in r.stdout
    tok = Tokenizer.load(path)
    assert 262 < tok.vocab_size <= 300
    text = "The old sailor paints a red bicycle."
    assert tok.decode(tok.encode(text)) == text

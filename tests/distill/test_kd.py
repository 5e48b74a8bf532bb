"""Knowledge distillation: the loss against hand-computed values, per-domain teacher routing,
and `distill train` end to end (both directions, resume, clear errors)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from cli_helpers import torch_threads
from conftest import corpus_text

from lightseek.distill.kd import KdConfig, TeacherSet, chunked_token_kl, kd_loss, token_kl
from lightseek.errors import ConfigError

# one position, three tokens: student and teacher distributions written out by hand
P_S = [0.5, 0.3, 0.2]
P_T = [0.2, 0.2, 0.6]


def _logits(p):
    return torch.tensor([[math.log(x) for x in p]])


def _kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q))


def test_divergences_equal_hand_computed_values():
    s, t = _logits(P_S), _logits(P_T)
    fwd, rev = _kl(P_T, P_S), _kl(P_S, P_T)
    assert fwd == pytest.approx(0.39482, abs=1e-5) and rev == pytest.approx(0.36006, abs=1e-5)
    assert token_kl(s, t, KdConfig(divergence="forward")).item() == pytest.approx(fwd, rel=1e-5)
    assert token_kl(s, t, KdConfig(divergence="reverse")).item() == pytest.approx(rev, rel=1e-5)
    mix = token_kl(s, t, KdConfig(divergence="mix", forward_weight=0.25)).item()
    assert mix == pytest.approx(0.25 * fwd + 0.75 * rev, rel=1e-5)


def test_temperature_softens_both_and_scales_by_t_squared():
    s, t = _logits(P_S), _logits(P_T)
    T = 2.0

    def soften(p):
        z = [x ** (1 / T) for x in p]
        return [x / sum(z) for x in z]

    want = _kl(soften(P_T), soften(P_S)) * T * T
    assert token_kl(s, t, KdConfig(temperature=T)).item() == pytest.approx(want, rel=1e-5)


def test_kd_loss_mixes_with_next_token_loss_over_learned_tokens_only():
    # batch of 2 rows x 2 positions; row 1 position 1 is not learned (-100)
    s = torch.stack([torch.cat([_logits(P_S), _logits(P_T)]), torch.cat([_logits(P_T), _logits(P_S)])])  # (2, 2, 3)
    t = torch.stack([torch.cat([_logits(P_T), _logits(P_T)]), torch.cat([_logits(P_S), _logits(P_T)])])
    y = torch.tensor([[2, 0], [1, -100]])
    cfg = KdConfig(ce_weight=0.3)
    ce = [-math.log(P_S[2]), -math.log(P_T[0]), -math.log(P_T[1])]
    kl = [_kl(P_T, P_S), 0.0, _kl(P_S, P_T)]
    want = sum(0.3 * c + 0.7 * k for c, k in zip(ce, kl)) / 3
    assert kd_loss(s, t, y, cfg).item() == pytest.approx(want, rel=1e-5)
    # row 1 has no teacher: its token counts its next-token loss in full
    want_untaught = (0.3 * ce[0] + 0.7 * kl[0] + 0.3 * ce[1] + 0.7 * kl[1] + ce[2]) / 3
    got = kd_loss(s, t, y, cfg, taught_B=torch.tensor([True, False])).item()
    assert got == pytest.approx(want_untaught, rel=1e-5)
    # ce_weight 1 is plain cross-entropy
    assert kd_loss(s, t, y, KdConfig(ce_weight=1.0)).item() == pytest.approx(sum(ce) / 3, rel=1e-5)


def test_kd_loss_gradient_pulls_student_toward_teacher():
    s = _logits(P_S).unsqueeze(0).clone().requires_grad_(True)  # (1, 1, 3)
    t = _logits(P_T).unsqueeze(0)
    opt = torch.optim.SGD([s], lr=1.0)
    before = _kl(P_T, P_S)
    for _ in range(50):
        opt.zero_grad()
        kd_loss(s, t, torch.tensor([[2]]), KdConfig(ce_weight=0.0)).backward()
        opt.step()
    after = token_kl(s[0].detach(), t[0], KdConfig()).item()
    assert after < before / 20


@pytest.mark.parametrize("divergence", ["forward", "reverse", "mix"])
def test_chunked_divergence_has_the_same_values_and_gradients(divergence):
    torch.manual_seed(0)
    cfg = KdConfig(divergence=divergence, temperature=2.0, forward_weight=0.3)
    student, teacher, grad_out = torch.randn(37, 11) * 3, torch.randn(37, 11) * 3, torch.rand(37)
    a, b = student.clone().requires_grad_(), student.clone().requires_grad_()
    plain, chunked = token_kl(a, teacher, cfg), chunked_token_kl(b, teacher, cfg, chunk=8)  # 37 = 4 x 8 + 5
    torch.testing.assert_close(chunked, plain)
    plain.backward(grad_out)
    chunked.backward(grad_out)
    torch.testing.assert_close(b.grad, a.grad)


def test_pure_distillation_equals_the_mean_divergence():
    torch.manual_seed(0)
    s, t = torch.randn(2, 5, 7), torch.randn(2, 5, 7)
    y = torch.randint(0, 7, (2, 5))
    y[0, :2] = -100
    loss = kd_loss(s, t, y, KdConfig(ce_weight=0.0))
    learned = y != -100
    torch.testing.assert_close(loss, token_kl(s[learned], t[learned], KdConfig()).mean())
    # a row without a teacher still learns the next token in full
    taught = torch.tensor([True, False])
    ce = torch.nn.functional.cross_entropy(s[1], y[1], reduction="sum")
    expected = (token_kl(s[0][learned[0]], t[0][learned[0]], KdConfig()).sum() + ce) / learned.sum()
    torch.testing.assert_close(kd_loss(s, t, y, KdConfig(ce_weight=0.0), taught), expected)


def test_bad_kd_settings_are_clear_errors():
    with pytest.raises(ConfigError, match="kd.temperature"):
        KdConfig(temperature=0)
    with pytest.raises(ConfigError, match="kd.ce_weight"):
        KdConfig(ce_weight=1.5)
    with pytest.raises(ConfigError, match="share one tokenizer"):
        kd_loss(torch.zeros(1, 2, 5), torch.zeros(1, 2, 6), torch.zeros(1, 2, dtype=torch.long), KdConfig())


class _Const(torch.nn.Module):
    """A teacher whose logits say which teacher it is (its id at every position)."""

    def __init__(self, ident: float):
        super().__init__()
        self.ident = ident
        self.seen = 0

    def forward(self, idx):
        self.seen += idx.shape[0]
        return type("Out", (), {"logits": torch.full((*idx.shape, 4), self.ident)})()


def test_each_row_is_taught_by_its_own_domains_teacher():
    teachers = {"medical": _Const(1.0), "finance": _Const(2.0)}
    ts = TeacherSet(teachers)
    x = torch.zeros(5, 3, dtype=torch.long)
    logits, taught = ts.logits(x, ["finance", "medical", "general", "finance", "medical"])
    assert taught.tolist() == [True, True, False, True, True]
    assert logits[:, 0, 0].tolist() == [2.0, 1.0, 0.0, 2.0, 1.0]
    # each teacher ran on its own rows only
    assert teachers["medical"].seen == 2 and teachers["finance"].seen == 2
    none, taught = ts.logits(x[:2], ["general", "legal"])
    assert none is None and not taught.any()
    with pytest.raises(ConfigError, match="row domains"):
        ts.logits(x, ["medical"])


def test_a_teacher_of_several_domains_runs_once_per_batch():
    shared, other = _Const(1.0), _Const(2.0)
    ts = TeacherSet({"medical": shared, "legal": shared, "finance": other})
    calls = []
    shared.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    x = torch.zeros(5, 3, dtype=torch.long)
    logits, taught = ts.logits(x, ["legal", "medical", "finance", "general", "legal"])
    assert calls == [3] and other.seen == 1  # one forward over the three rows it teaches
    assert logits[:, 0, 0].tolist() == [1.0, 1.0, 2.0, 0.0, 1.0] and taught.tolist() == [True] * 3 + [False, True]


# --- distill train end to end -----------------------------------------------------------------
@pytest.fixture(scope="module")
def domain_files(tmp_path_factory):
    """Two 'domains' of real text as JSONL records (many documents, so both splits have some)."""
    root = tmp_path_factory.mktemp("kd_data")
    paras = [p.strip() for p in corpus_text().split("\n\n") if len(p.strip()) > 40]
    files = {}
    for name, part in (("drama", paras[: len(paras) // 2]), ("general", paras[len(paras) // 2:])):
        f = root / f"{name}.jsonl"
        f.write_text("".join(json.dumps({"text": p}) + "\n" for p in part[:400]), encoding="utf-8")
        files[name] = f
    return files


def _cfg(tmp_path, debug_checkpoint, domain_files, teacher: bool = True, **over):
    """A small new student; ``debug_checkpoint`` teaches the 'drama' rows, or with ``teacher``
    False nobody does (the data alone, with the same tokenizer)."""
    from lightseek.distill.train import load_distill_config

    teach = f"--teachers.drama={debug_checkpoint}" if teacher else f"--tokenizer={debug_checkpoint / 'tokenizer.json'}"
    args = [f"--out_dir={tmp_path / 'run'}", teach,
            f"--data.sources=[drama={domain_files['drama']},general={domain_files['general']}]",
            "--model.dim=32", "--model.n_heads=2", "--model.n_kv_heads=1", "--model.n_layers=2",
            "--model.moe_inter_dim=16", "--model.dense_inter_dim=64", "--model.max_seq_len=64",
            "--preset=debug", "--train.steps=6", "--train.batch_size=4", "--train.seq_len=32",
            "--train.eval_every=3", "--train.eval_batches=1", "--train.ckpt_every=3", "--train.plots=false",
            "--train.warmup_steps=1", "--eval_windows=4"]
    args += [f"--{k}={v}" for k, v in over.items()]
    return load_distill_config(None, args)


def test_distill_train_smaller_student_from_a_teacher(tmp_path, debug_checkpoint, domain_files):
    from lightseek.distill.train import distill_train
    from lightseek.model.checkpoint import load_model, read_checkpoint_config

    summary = distill_train(_cfg(tmp_path, debug_checkpoint, domain_files), show_progress=False)
    assert summary["steps"] == 6 and set(summary["domains"]) == {"drama", "general"}
    assert all(math.isfinite(p) and p > 1 for p in summary["domains"].values())
    student = load_model(summary["checkpoint"])
    teacher = load_model(debug_checkpoint)
    assert student.num_params()["active"] * 4 <= teacher.num_params()["active"] * 1.5  # a much smaller model
    meta = read_checkpoint_config(summary["checkpoint"])
    assert meta["distilled"]["teachers"]["drama"]["sha256"] and meta["distilled"]["kd"]["divergence"] == "forward"


def test_distill_resume_equals_uninterrupted(tmp_path, debug_checkpoint, domain_files):
    from lightseek.distill.train import distill_train
    from lightseek.train.metrics import read_metrics

    full = distill_train(_cfg(tmp_path / "a", debug_checkpoint, domain_files), show_progress=False)
    distill_train(_cfg(tmp_path / "b", debug_checkpoint, domain_files, **{"train.stop_after": 3}),
                  show_progress=False)
    resumed = distill_train(_cfg(tmp_path / "b", debug_checkpoint, domain_files), resume=True, show_progress=False)
    losses = [[r["loss"] for r in read_metrics(p / "run" / "metrics.jsonl") if r["kind"] == "train"]
              for p in (tmp_path / "a", tmp_path / "b")]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    assert resumed["domains"] == pytest.approx(full["domains"], rel=1e-5)


def test_base_to_expert_tie_keeps_the_student_near_the_base(tmp_path, debug_checkpoint, domain_files):
    """The reverse direction: a student started from the base trains on 'drama' while the base
    teaches the general rows; with the tie its general text stays closer to the base's."""
    from lightseek.distill.train import distill_train, load_distill_config

    def run(out, teachers):
        args = [f"--out_dir={out}", f"--student={debug_checkpoint}", "--train.steps=12", "--train.batch_size=4",
                "--train.seq_len=32", "--train.eval_every=12", "--train.eval_batches=1", "--train.plots=false",
                "--train.lr=3e-2", "--train.warmup_steps=1", "--eval_windows=4", "--kd.ce_weight=0.0",
                f"--data.sources=[drama={domain_files['drama']},general={domain_files['general']}]",
                "--data.weights.drama=0.5", "--data.weights.general=0.5", *teachers]
        return distill_train(load_distill_config(None, args), show_progress=False)

    free = run(tmp_path / "free", [])
    tied = run(tmp_path / "tied", [f"--teachers.general={debug_checkpoint}"])
    assert tied["domains"]["general"] < free["domains"]["general"]


def test_distill_config_errors(tmp_path, debug_checkpoint, domain_files):
    from lightseek.distill.train import distill_train

    with pytest.raises(ConfigError, match="no data source"):
        distill_train(_cfg(tmp_path, debug_checkpoint, domain_files, **{"teachers.legal": debug_checkpoint}),
                      show_progress=False)
    with pytest.raises(ConfigError, match="DOMAIN=PATH"):
        distill_train(_cfg(tmp_path, debug_checkpoint, domain_files, **{"data.sources": "[nodomain]"}),
                      show_progress=False)
    with pytest.raises(ConfigError, match="data.weights names"):
        distill_train(_cfg(tmp_path, debug_checkpoint, domain_files, **{"data.weights.legal": 1}),
                      show_progress=False)


def _drama_windows(debug_checkpoint, domain_files, n: int = 32, width: int = 33) -> torch.Tensor:
    """``n`` token windows of the 'drama' text (its last paragraphs), for measuring the students."""
    from lightseek.data.tokenizer import Tokenizer

    paras = [json.loads(ln)["text"] for ln in domain_files["drama"].read_text(encoding="utf-8").splitlines()]
    ids = Tokenizer.load(debug_checkpoint).encode("\n\n".join(paras[-80:]))
    assert len(ids) >= n * width
    return torch.tensor(ids[: n * width]).view(n, width)


def test_a_dense_student_learns_from_a_moe_teacher(tmp_path, debug_checkpoint, domain_files):
    """Distillation needs only a shared tokenizer: a dense student of another shape learns from
    the MoE teacher, and learns what the teacher predicts: after the same steps on the same rows
    from the same initialisation, the distilled student's next-token distributions on 'drama'
    text are much closer to the teacher's (KL(teacher || student)) than a student trained on the
    data alone."""
    from lightseek.distill.train import distill_train
    from lightseek.eval.kl import kl_divergence
    from lightseek.model.checkpoint import load_model
    from lightseek.train.metrics import read_metrics

    def train(name, teacher=True, **over):
        over = {"model.router_mode": "dense", "train.steps": 60, "train.lr": 3e-2, "train.batch_size": 8,
                "train.eval_every": 60, "train.ckpt_every": 60, "train.log_every": 1, **over}
        with torch_threads(1):  # 2 threads on 2 busy cores wait on each other: several times slower
            summary = distill_train(_cfg(tmp_path / name, debug_checkpoint, domain_files, teacher, **over),
                                    show_progress=False)
        losses = [r["loss"] for r in read_metrics(tmp_path / name / "run" / "metrics.jsonl") if r["kind"] == "train"]
        return load_model(summary["checkpoint"]), losses

    distilled, _ = train("kd", **{"kd.ce_weight": 0.0})   # drama rows: the teacher's distributions only
    alone, alone_losses = train("data", teacher=False)     # drama rows: the next token only
    # control: with the teacher's weight at 0 the run is the data-only run exactly, so both
    # students above started from the same weights and saw the same rows
    _, control_losses = train("control", **{"kd.ce_weight": 1.0})
    assert control_losses == alone_losses and len(alone_losses) == 60

    teacher = load_model(debug_checkpoint)
    assert not distilled.cfg.is_moe and teacher.cfg.is_moe
    windows = _drama_windows(debug_checkpoint, domain_files)
    kl_distilled = kl_divergence(distilled, teacher, [windows])["kl_mean"]
    kl_alone = kl_divergence(alone, teacher, [windows])["kl_mean"]
    # measured: 0.031 vs 0.120 nats per token (a ratio of 0.26; deterministic on CPU)
    assert math.isfinite(kl_distilled) and kl_distilled < 0.5 * kl_alone, (kl_distilled, kl_alone)


def test_a_teacher_with_another_tokenizer_is_refused(tmp_path, debug_checkpoint, domain_files):
    from lightseek.data.corpus import Document
    from lightseek.data.prepare import train_tokenizer
    from lightseek.distill.train import distill_train

    docs = iter([Document("other", 0, "a different corpus entirely, with other words. " * 50)])
    other = train_tokenizer(docs, 300, 10_000).save(tmp_path / "tok")
    with pytest.raises(ConfigError, match="another tokenizer"):
        distill_train(_cfg(tmp_path, debug_checkpoint, domain_files, tokenizer=other), show_progress=False)

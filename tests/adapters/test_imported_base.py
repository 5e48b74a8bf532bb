"""Adapters on an imported pretrained-layout model (a tiny random Llama with tied embeddings and a
ChatML template, as SmolLM2 is): the conversations are encoded with the model's own template,
only the assistant's turns are learned, and the adapter trains, saves and loads on that base."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from lightseek.adapters.finetune import finetune, load_finetune_config  # noqa: E402
from lightseek.adapters.lora import use_adapters  # noqa: E402
from lightseek.adapters.store import base_fingerprint, load_adapter  # noqa: E402
from lightseek.data.chat import encode_chat  # noqa: E402
from lightseek.data.tokenizer import Tokenizer  # noqa: E402
from lightseek.model.checkpoint import load_model  # noqa: E402
from lightseek.models.importer import import_model  # noqa: E402
from tests.models.tiny import hf_model, save_hf_folder  # noqa: E402

QA = [("What damages the optic nerve?", "Glaucoma damages the optic nerve."),
      ("What did the markets do?", "Markets rose 3.5% as bond yields fell."),
      ("What did the court hold?", "The court held that the clause was void.")]


@pytest.fixture(scope="module")
def imported(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("imported")
    src = save_hf_folder(hf_model("llama", tie_word_embeddings=True, attention_bias=False), root / "src")
    return import_model(src, root / "ckpt", show_progress=False)


def test_lora_on_an_imported_chat_model(imported: Path, tmp_path: Path) -> None:
    tok = Tokenizer.load(imported)
    messages = [{"role": "user", "content": QA[0][0]}, {"role": "assistant", "content": QA[0][1]}]
    ids, mask = encode_chat(tok, messages)
    assert tok.token_id("<|im_start|>") in ids  # the model's own template, not lightseek's
    learned_ids = [i for i, m in zip(ids, mask) if m]
    assert tok.decode(learned_ids).strip() == QA[0][1]  # the answer, not the question or the role tags
    assert learned_ids[-1] == tok.token_id("<|im_end|>")  # and the end of its turn, to learn to stop

    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant",
                                                                                       "content": a}]}) + "\n"
                            for q, a in QA * 20), encoding="utf-8")
    cfg = load_finetune_config(None, [f"--base={imported}", f"--data.files=[\"{data}\"]", "--name=qa",
                                      f"--out_dir={tmp_path / 'run'}", "--train.steps=30", "--train.batch_size=4",
                                      "--train.seq_len=64", "--train.eval_every=30", "--train.plots=false",
                                      "--train.lr=1e-2", "--train.warmup_steps=1", "--lora.rank=4",
                                      "--lora.targets=[attn,dense]", "--train.grad_checkpoint=true"])
    summary = finetune(cfg, "lora", show_progress=False)
    assert summary["finished"] and summary["trainable_parameters"] < summary["model_parameters"] / 5

    model = load_model(imported).eval()
    load_adapter(model, tmp_path / "run", base_fingerprint(imported)["sha256"])
    x = torch.tensor([ids])
    with torch.no_grad(), use_adapters(model, None):
        base = model(x).logits
    with torch.no_grad(), use_adapters(model, "qa"):
        tuned = model(x).logits
    learned_pos = torch.tensor(mask[1:] + [False])  # logits at t predict token t + 1
    target = x[0, 1:]

    def loss(logits):
        return torch.nn.functional.cross_entropy(logits[0, :-1][learned_pos[:-1]], target[learned_pos[:-1]])
    assert loss(tuned) < 0.9 * loss(base)  # it learned the answers through the template (a random base: slowly)

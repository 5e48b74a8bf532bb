"""`lightseek generate` with `--adapter`, `--chat` and `--system`: what it prints equals the
library's generation for the same model, adapter and rendered prompt; an adapter that changes
the weights changes greedy output, one that changes nothing does not; the chat template is the
tokenizer's own when it has one, the native one when it has none, and a clear error when an
imported tokenizer names none."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from cli_helpers import lora_train, one_torch_thread, write_instructions  # noqa: F401  (fixture)
from safetensors.torch import load_file, save_file

from lightseek.cli import main

PROMPT = "The king"
N = 12
# a template of the native special tokens, but without the native template's newlines
TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def generate(capsys, checkpoint: Path, *args: str) -> str:
    """stdout of `lightseek generate CHECKPOINT ARGS` (asserting exit 0 and nothing on stderr)."""
    rc = main(["generate", str(checkpoint), "--max-new-tokens", str(N), *args])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert err == ""
    return out


def reference(checkpoint: Path, prompt, adapter: Path | None = None, **sampling) -> str:
    """The same generation through the library: the model (with ``adapter`` attached and active),
    ``prompt`` as text or token ids."""
    from lightseek.adapters.lora import use_adapters
    from lightseek.adapters.store import base_fingerprint, load_adapter
    from lightseek.data.tokenizer import Tokenizer
    from lightseek.model.checkpoint import load_model
    from lightseek.model.generate import generate_text
    from lightseek.train.config import load_run_config

    params = load_run_config(None, [f"--generate.max_new_tokens={N}"] +
                             [f"--generate.{k}={v}" for k, v in sampling.items()]).generate
    model, tok = load_model(checkpoint), Tokenizer.load(checkpoint)
    if adapter is None:
        return generate_text(model, tok, prompt, params)
    name = load_adapter(model, adapter, base_fingerprint(checkpoint)["sha256"]).name
    with use_adapters(model, name):
        return generate_text(model, tok, prompt, params)


def edit_adapter(src: Path, dst: Path, edit) -> Path:
    """A copy of adapter folder ``src`` whose tensors ``edit(name, tensor)`` rewrote."""
    shutil.copytree(src, dst)
    f = dst / "adapter_model.safetensors"
    save_file({k: edit(k, v).contiguous() for k, v in load_file(str(f)).items()}, str(f))
    return dst


@pytest.fixture(scope="module")
def adapters(debug_checkpoint, tmp_path_factory) -> dict[str, Path]:
    """A 2-step adapter from `lightseek lora train`, and two copies: `strong` with large seeded B
    factors, `noop` with zero B factors and the base model's own routing state (the identity)."""
    from lightseek.model.checkpoint import load_model

    root = tmp_path_factory.mktemp("gen_adapters")
    trained = lora_train(debug_checkpoint, write_instructions(root / "qa.jsonl"), root / "trained", "med")
    g = torch.Generator().manual_seed(0)
    strong = edit_adapter(trained, root / "strong",
                          lambda k, v: torch.randn(v.shape, generator=g) * 0.5 if "lora_B" in k else v)
    router = load_model(debug_checkpoint).moe_layers()[0].router
    base_state = {"bias_E": router.bias_E, "threshold": router.threshold}

    def identity(k: str, v: torch.Tensor) -> torch.Tensor:
        if "lora_B" in k:
            return torch.zeros_like(v)
        field = k.rsplit(".", 1)[-1]
        return base_state[field].detach().clone().reshape(v.shape) if field in base_state else v

    noop = edit_adapter(trained, root / "noop", identity)
    return {"trained": trained, "strong": strong, "noop": noop}


def test_generate_prints_the_prompt_and_its_continuation(debug_checkpoint, capsys):
    out = generate(capsys, debug_checkpoint, "--prompt", PROMPT, "--temperature", "0")
    assert out.startswith(PROMPT) and out.endswith("\n") and len(out) > len(PROMPT) + 1
    assert out == PROMPT + reference(debug_checkpoint, PROMPT, temperature=0) + "\n"


def test_an_adapter_that_changes_the_weights_changes_greedy_output(debug_checkpoint, adapters, capsys):
    base = generate(capsys, debug_checkpoint, "--prompt", PROMPT, "--temperature", "0")
    strong = generate(capsys, debug_checkpoint, "--adapter", str(adapters["strong"]), "--prompt", PROMPT,
                      "--temperature", "0")
    assert strong.startswith(PROMPT) and len(strong) > len(PROMPT) + 1
    assert strong != base
    assert strong == PROMPT + reference(debug_checkpoint, PROMPT, adapters["strong"], temperature=0) + "\n"
    # the identity adapter (B = 0, the base's routing state) leaves greedy output as it was
    noop = generate(capsys, debug_checkpoint, "--adapter", str(adapters["noop"]), "--prompt", PROMPT,
                    "--temperature", "0")
    assert noop == base
    # a seed makes sampling with an adapter reproducible, and it is the library's sample
    sampled = [generate(capsys, debug_checkpoint, "--adapter", str(adapters["trained"]), "--prompt", PROMPT,
                        "--temperature", "1.0", "--top-p", "1.0", "--seed", "7") for _ in range(2)]
    assert sampled[0] == sampled[1]
    assert sampled[0] == PROMPT + reference(debug_checkpoint, PROMPT, adapters["trained"], temperature=1.0,
                                            top_p=1.0, seed=7) + "\n"


def test_chat_renders_the_native_template_when_the_tokenizer_has_none(debug_checkpoint, capsys):
    from lightseek.data.chat import encode_chat
    from lightseek.data.tokenizer import Tokenizer

    tok = Tokenizer.load(debug_checkpoint)
    assert tok.chat is None  # a native tokenizer: the built-in <|role|>\n...<|end|>\n template
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": PROMPT}]
    ids = encode_chat(tok, messages, add_generation_prompt=True)[0]
    assert ids[-2:] == [tok.token_id("<|assistant|>")] + tok.encode("\n")
    out = generate(capsys, debug_checkpoint, "--chat", "--system", "Be brief.", "--prompt", PROMPT,
                   "--temperature", "0")
    assert not out.startswith(PROMPT)  # with --chat the prompt is not echoed
    assert out == reference(debug_checkpoint, ids, temperature=0) + "\n"
    plain_chat = generate(capsys, debug_checkpoint, "--chat", "--prompt", PROMPT, "--temperature", "0")
    user_only = encode_chat(tok, messages[1:], add_generation_prompt=True)[0]
    assert plain_chat == reference(debug_checkpoint, user_only, temperature=0) + "\n"


def test_chat_uses_the_tokenizers_own_template(debug_checkpoint, tmp_path, capsys):
    from lightseek.data.chat import encode_chat
    from lightseek.data.tokenizer import Tokenizer

    ckpt = tmp_path / "templated"
    shutil.copytree(debug_checkpoint, ckpt)
    (ckpt / "tokenizer_config.json").write_text(json.dumps(
        {"chat_template": TEMPLATE, "eos_token": "<|endoftext|>", "end_tokens": ["<|end|>"]}), encoding="utf-8")
    tok, native = Tokenizer.load(ckpt), Tokenizer.load(debug_checkpoint)
    messages = [{"role": "user", "content": PROMPT}]
    ids = encode_chat(tok, messages, add_generation_prompt=True)[0]
    want = ([tok.token_id("<|user|>")] + tok.encode(PROMPT) + [tok.token_id("<|end|>"), tok.token_id("<|assistant|>")])
    assert ids == want != encode_chat(native, messages, add_generation_prompt=True)[0]
    out = generate(capsys, ckpt, "--chat", "--prompt", PROMPT, "--temperature", "0")
    assert out == reference(ckpt, ids, temperature=0) + "\n"


def test_chat_on_a_tokenizer_config_without_a_template_is_a_clear_error(debug_checkpoint, tmp_path, capsys):
    ckpt = tmp_path / "untemplated"
    shutil.copytree(debug_checkpoint, ckpt)
    (ckpt / "tokenizer_config.json").write_text(json.dumps({"chat_template": None, "eos_token": "<|endoftext|>"}),
                                                encoding="utf-8")
    assert main(["generate", str(ckpt), "--chat", "--prompt", PROMPT, "--max-new-tokens", "2"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("lightseek generate: error: ")
    assert "no chat template" in err
    # the same checkpoint still generates from a plain prompt
    assert generate(capsys, ckpt, "--prompt", PROMPT, "--temperature", "0").startswith(PROMPT)

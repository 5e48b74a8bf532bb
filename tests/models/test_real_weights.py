"""SmolLM2-135M-Instruct, the default base, against transformers on the same GGUF file.

Needs the fetched model (`lightseek fetch smollm2-135m-instruct`, which `make test` runs first);
skipped with that reason when the cache does not hold it."""

from __future__ import annotations

import pytest
import torch

from lightseek.known_models import KNOWN_MODELS, cache_dir, cached_model_dir

NAME = "smollm2-135m-instruct"
CKPT = cached_model_dir(NAME)
GGUF = cache_dir() / "sources" / NAME / KNOWN_MODELS[NAME].member.rsplit("/", 1)[-1]

pytestmark = [
    pytest.mark.real_weights,
    pytest.mark.skipif(not (CKPT / "config.json").is_file() or not GGUF.is_file(),
                       reason=f"{NAME} is not fetched (run `lightseek fetch {NAME}`)"),
]


@pytest.fixture(scope="module")
def ours():
    from lightseek.data.tokenizer import Tokenizer
    from lightseek.model.checkpoint import load_model

    return load_model(NAME), Tokenizer.load(CKPT)


def test_logits_and_greedy_tokens_equal_transformers(ours) -> None:
    transformers = pytest.importorskip("transformers", reason="the parity test compares with transformers")
    from lightseek.data.chat import encode_chat
    from lightseek.model.generate import generate_ids
    from lightseek.model.sampling import SamplingParams

    model, tok = ours
    theirs = transformers.AutoModelForCausalLM.from_pretrained(GGUF.parent, gguf_file=GGUF.name,
                                                               dtype=torch.float32).eval()
    ids = encode_chat(tok, [{"role": "user", "content": "What is glaucoma?"}], add_generation_prompt=True)[0]
    x = torch.tensor([ids])
    with torch.no_grad():
        assert (model(x).logits - theirs(x).logits).abs().max().item() < 1e-4
    # an explicit mask: generate would otherwise take the prompt's <|im_end|> (the pad id) for padding
    ref = theirs.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=64, min_new_tokens=64,
                          do_sample=False, eos_token_id=None, pad_token_id=tok.pad_id)[0, len(ids):].tolist()
    got = list(generate_ids(model, ids, SamplingParams(temperature=0.0, max_new_tokens=64)))
    assert got == ref


def test_chat_answers_about_the_eye(ours) -> None:
    from lightseek.data.chat import encode_chat
    from lightseek.model.generate import generate_text
    from lightseek.model.sampling import SamplingParams

    model, tok = ours
    ids = encode_chat(tok, [{"role": "user", "content": "What is glaucoma?"}], add_generation_prompt=True)[0]
    answer = generate_text(model, tok, ids, SamplingParams(temperature=0.0, max_new_tokens=48))
    assert any(word in answer.lower() for word in ("eye", "optic", "vision")), answer
    assert "<|im_end|>" not in answer

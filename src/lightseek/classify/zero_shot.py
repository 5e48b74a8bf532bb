"""Zero-shot domain classification: the instruct model is asked, and its answer's likelihood decides.

`ZeroShotDomains(model)` is a scikit-learn classifier with the interface `DomainClassifier`
uses for its trained pipelines (`fit`, `predict_proba`, `classes_`), so a zero-shot classifier
is saved, loaded, evaluated and used for routing like a trained one. `fit` learns nothing but
the label set. For each text the model sees, in its chat template, the question "Which of these
domains is this text from: ...? Answer with one word." followed by the text, and each domain's
name is scored as the whole answer (the sum of the log-probabilities of its tokens and the end
of the turn); a softmax over those scores is the probability. A small model prefers some answers
whatever the text (SmolLM2-135M answers `finance` or `medical` for most texts), so by default the
scores are calibrated as in "Calibrate Before Use" (Zhao et al., 2021): each domain's score for
content-free texts (`N/A`, an empty text, `[MASK]`) is subtracted, which divides every domain's
probability by its probability when there is nothing to read. The prompt is encoded once per
text and the answers continue from its KV cache as one batch. The model is loaded once per
process (not pickled): a saved classifier keeps the model's name, not its weights.
"""

from __future__ import annotations

from sklearn.base import BaseEstimator, ClassifierMixin

from lightseek.errors import ConfigError
from lightseek.progress import progress

CONTENT_FREE = ("N/A", "", "[MASK]")
QUESTION = ("Which of these domains is the text below from: {domains}? Answer with one word.\n\n"
            "Text: {text}")


class ZeroShotDomains(ClassifierMixin, BaseEstimator):
    """Asks checkpoint ``model`` (a folder or a fetched model's name) which domain each text is from."""

    def __init__(self, model: str, max_chars: int = 1000, question: str = QUESTION, calibrate: bool = True) -> None:
        self.model = model
        self.max_chars = max_chars
        self.question = question
        self.calibrate = calibrate

    def fit(self, texts, labels):
        import numpy as np

        if "{text}" not in self.question or "{domains}" not in self.question:
            raise ConfigError("domains.zero_shot question: the template needs {text} and {domains}")
        self.classes_ = np.array(sorted(set(labels)))
        self._load()
        return self

    def predict_proba(self, texts):
        import numpy as np

        out = np.zeros((len(texts), len(self.classes_)))
        with progress(len(texts), f"asking {self.model}") as step:
            for row, text in enumerate(texts):
                out[row] = self.scores(text)
                step(1)
        if getattr(self, "calibrate", False):   # classifiers saved before calibration existed: as they were
            out -= self.content_free_scores()
        out -= out.max(axis=1, keepdims=True)
        probs = np.exp(out)
        return probs / probs.sum(axis=1, keepdims=True)

    def scores(self, text: str) -> list[float]:
        """Each domain's summed answer log-probability for ``text`` (uncalibrated)."""
        import torch

        from lightseek.data.chat import encode_chat

        model, tok = self._load()
        names = [str(c) for c in self.classes_]
        messages = [{"role": "user", "content": self.question.format(domains=", ".join(names),
                                                                     text=text[: self.max_chars])}]
        prompt = encode_chat(tok, messages, add_generation_prompt=True)[0]
        answers = [encode_chat(tok, [*messages, {"role": "assistant", "content": n}]) for n in names]
        with torch.inference_mode():
            return _answer_scores(model, prompt, answers)

    def content_free_scores(self):
        """The mean scores of the content-free texts: what the model answers with nothing to read."""
        import numpy as np

        key = (self.model, self.question, self.max_chars, tuple(map(str, self.classes_)))
        if key not in _CONTENT_FREE:
            _CONTENT_FREE[key] = np.mean([self.scores(t) for t in CONTENT_FREE], axis=0)
        return _CONTENT_FREE[key]

    def predict(self, texts):
        return self.classes_[self.predict_proba(texts).argmax(axis=1)]

    def _load(self):
        """(model, tokenizer), loaded once per process and shared with the feature mode."""
        from lightseek.classify.features import load_checkpoint

        return load_checkpoint(self.model, "domains.zero_shot")[1:]


_CONTENT_FREE: dict = {}   # per process: the model's content-free scores per (model, question, domains)


def _answer_scores(model, prompt: list[int], answers: list[tuple[list[int], list[bool]]]):
    """Per answer, the summed log-probability of its learned tokens (its text and the end of the
    turn) after ``prompt``. Two forward passes: the prompt once, then every answer at once as one
    batch, each row continuing from a copy of the prompt's cache (rows right-padded: a causal
    model's positions never see the padding after them)."""
    import torch

    from lightseek.model.kv_cache import KVCache

    rests, masks = [], []
    for ids, learn in answers:
        if len(ids) <= len(prompt) or ids[:len(prompt)] != prompt:
            raise ConfigError("domains.zero_shot: the chat template renders the answer's turn differently "
                              "from the generation prompt")
        rests.append(ids[len(prompt):])
        masks.append(learn[len(prompt):])
    longest = max(map(len, rests))
    limit = model.cfg.max_seq_len - longest - 1
    if limit < 8:
        raise ConfigError(f"domains.zero_shot: the answers leave no room in a context of {model.cfg.max_seq_len}")
    head = prompt[:limit] if len(prompt) <= limit else prompt[: limit - 2] + prompt[-2:]  # keep the turn's opening
    one = KVCache.for_model(model, 1, max_len=len(head))
    last = model(torch.tensor([head]), cache=one, last_only=True).logits[0, -1].float().log_softmax(-1)
    rows = KVCache.for_model(model, len(rests), max_len=len(head) + longest)
    for mine, theirs in zip((*rows.k, *rows.v), (*one.k, *one.v)):
        mine[:, :, :len(head)] = theirs
    rows.advance(len(head))
    tokens = torch.tensor([r + [r[-1]] * (longest - len(r)) for r in rests])                # (A, L)
    logp = model(tokens, cache=rows).logits.float().log_softmax(-1)                            # (A, L, V)
    logp = torch.cat([last.expand(len(rests), 1, -1), logp[:, :-1]], dim=1)                 # predicts tokens[:, i]
    picked = logp.gather(2, tokens[..., None])[..., 0]
    learned = torch.tensor([m + [False] * (longest - len(m)) for m in masks])
    return [float(v) for v in torch.where(learned, picked, 0.0).sum(1)]

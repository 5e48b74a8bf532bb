"""Zero-shot domain classification: the instruct model is asked, and its answer's likelihood decides.

`ZeroShotDomains(model)` is a scikit-learn classifier with the interface `DomainClassifier`
uses for its trained pipelines (`fit`, `predict_proba`, `classes_`), so a zero-shot classifier
is saved, loaded, evaluated and used for routing like a trained one. `fit` learns nothing but
the label set. For each text the model sees, in its chat template, the question "Which of these
domains is this text from: ...? Answer with one word." followed by the text, and each domain's
name is scored as the whole answer (the sum of the log-probabilities of its tokens and the end
of the turn); a softmax over those scores is the probability. The prompt is encoded once per
text and each answer continues from its KV cache. The model is loaded once per process (not
pickled): a saved classifier keeps the model's name, not its weights.
"""

from __future__ import annotations

from sklearn.base import BaseEstimator, ClassifierMixin

from lightseek.errors import ConfigError
from lightseek.progress import progress

QUESTION = ("Which of these domains is the text below from: {domains}? Answer with one word.\n\n"
            "Text: {text}")


class ZeroShotDomains(ClassifierMixin, BaseEstimator):
    """Asks checkpoint ``model`` (a folder or a fetched model's name) which domain each text is from."""

    def __init__(self, model: str, max_chars: int = 1000, question: str = QUESTION) -> None:
        self.model = model
        self.max_chars = max_chars
        self.question = question

    def fit(self, texts, labels):
        import numpy as np

        if "{text}" not in self.question or "{domains}" not in self.question:
            raise ConfigError("domains.zero_shot question: the template needs {text} and {domains}")
        self.classes_ = np.array(sorted(set(labels)))
        self._load()
        return self

    def predict_proba(self, texts):
        import numpy as np
        import torch

        from lightseek.data.chat import encode_chat

        model, tok = self._load()
        names = [str(c) for c in self.classes_]
        listed = ", ".join(names)
        out = np.zeros((len(texts), len(names)))
        with torch.inference_mode(), progress(len(texts), f"asking {self.model}") as step:
            for row, text in enumerate(texts):
                messages = [{"role": "user", "content": self.question.format(domains=listed,
                                                                             text=text[: self.max_chars])}]
                prompt = encode_chat(tok, messages, add_generation_prompt=True)[0]
                answers = [encode_chat(tok, [*messages, {"role": "assistant", "content": n}])
                           for n in names]
                out[row] = _answer_scores(model, prompt, answers)
                step(1)
        out -= out.max(axis=1, keepdims=True)
        probs = np.exp(out)
        return probs / probs.sum(axis=1, keepdims=True)

    def predict(self, texts):
        return self.classes_[self.predict_proba(texts).argmax(axis=1)]

    def _load(self):
        """(model, tokenizer), loaded once per process and shared with the feature mode."""
        from lightseek.classify.features import load_checkpoint

        return load_checkpoint(self.model, "domains.zero_shot")[1:]


def _answer_scores(model, prompt: list[int], answers: list[tuple[list[int], list[bool]]]):
    """Per answer, the summed log-probability of its learned tokens (its text and the end of the
    turn) after ``prompt``; the prompt runs once and each answer continues from a copy of its cache."""
    import copy

    import torch

    from lightseek.model.kv_cache import KVCache

    longest = max(len(ids) - len(prompt) for ids, _ in answers)
    limit = model.cfg.max_seq_len - longest - 1
    if limit < 8:
        raise ConfigError(f"domains.zero_shot: the answers leave no room in a context of {model.cfg.max_seq_len}")
    head = prompt[:limit] if len(prompt) <= limit else prompt[: limit - 2] + prompt[-2:]  # keep the turn's opening
    cache = KVCache.for_model(model, 1, max_len=len(head) + longest)
    last = model(torch.tensor([head]), cache=cache, last_only=True).logits[0, -1].float().log_softmax(-1)
    scores = []
    for ids, learn in answers:
        rest, mask = ids[len(prompt):], learn[len(prompt):]
        if not rest or ids[:len(prompt)] != prompt:
            raise ConfigError("domains.zero_shot: the chat template renders the answer's turn differently "
                              "from the generation prompt")
        mine = copy.deepcopy(cache)
        logits = model(torch.tensor([rest]), cache=mine).logits[0].float().log_softmax(-1)   # (len(rest), V)
        logp = torch.cat([last[None], logits[:-1]])                                          # predicts rest[i]
        picked = logp.gather(1, torch.tensor(rest)[:, None])[:, 0]
        scores.append(float(picked[torch.tensor(mask)].sum()))
    return scores

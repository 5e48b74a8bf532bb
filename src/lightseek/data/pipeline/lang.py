"""Language identification. Two transparent shortcuts decide the common cases at once: a
CJK-ideograph share makes a text Chinese (langid is unsure on short Chinese text), and a high
share of the commonest English function words makes it English (langid's pure-Python feature
extraction costs ~10 ms per text); everything else goes to langid's normalised-probability model."""

from __future__ import annotations

import functools
import re

import numpy as np

from lightseek.errors import ConfigError

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f]")
_KANA = re.compile(r"[\u3040-\u30ff]")
_HANGUL = re.compile(r"[\uac00-\ud7af\u1100-\u11ff]")
_LETTER = re.compile(r"[^\W\d_]")
CHAT_MARKER = re.compile(r"<\|[a-z_]+\|>")  # the chat template's role markers
_LATIN_WORD = re.compile(r"[A-Za-z]+(?:'[a-z]+)?")
# words that are frequent in English and rare as words in other Latin-script languages
EN_FUNCTION_WORDS = frozenset([
    "the", "of", "and", "to", "that", "is", "was", "for", "with", "as", "his", "he", "it", "by", "be", "this",
    "which", "you", "not", "but", "are", "from", "or", "have", "had", "her", "they", "she", "at", "were",
    "been", "their", "we", "has", "would", "will", "there", "can", "all", "its", "if", "an", "so", "my",
    "what", "when", "who", "him", "them", "one", "more", "said", "our", "your", "also", "into", "than",
    "then", "these", "some", "could", "should"])


def cjk_share(text: str) -> float:
    """CJK ideographs as a share of all letters in ``text`` (0 when it has no letters)."""
    letters = len(_LETTER.findall(text))
    return len(_CJK.findall(text)) / letters if letters else 0.0


@functools.lru_cache(maxsize=1)
def _load_langid():
    """langid's model, loaded once per process (it takes seconds)."""
    try:
        from langid.langid import LanguageIdentifier, model
    except ImportError:
        raise ConfigError('the lang step needs langid: pip install "lightseek[data]"') from None
    return LanguageIdentifier.from_modelstring(model, norm_probs=True)


def _classify(model, text: str) -> tuple[str, float]:
    """langid's naive Bayes over the features the text has. langid's own ``classify`` multiplies
    the whole (features x languages) table by a mostly-zero integer vector without BLAS, ~10 ms
    a call; the same sums over the nonzero features alone take ~0.1 ms."""
    if not all(hasattr(model, a) for a in ("instance2fv", "nb_ptc", "nb_pc", "nb_classes")):
        return model.classify(text)  # another langid version: its own, slower way
    fv = model.instance2fv(text)
    nz = np.flatnonzero(fv)
    scores = fv[nz].astype(np.float64) @ model.nb_ptc[nz].astype(np.float64) + model.nb_pc
    probs = np.exp(scores - scores.max())
    top = int(probs.argmax())
    return str(model.nb_classes[top]), float(probs[top] / probs.sum())


class LanguageId:
    """``identify(text) -> (code, probability)``; 'und' with 0.0 for text without letters."""

    def __init__(self, cjk_ratio: float, sample_chars: int, en_function_ratio: float = 0.0) -> None:
        self.cjk_ratio = cjk_ratio
        self.en_function_ratio = en_function_ratio
        self.sample_chars = sample_chars
        self._model = None

    def _langid(self):
        if self._model is None:
            self._model = _load_langid()
        return self._model

    def identify(self, text: str) -> tuple[str, float]:
        sample = text[: self.sample_chars + 64]
        if "<|" in sample:
            sample = CHAT_MARKER.sub(" ", sample)
        sample = sample[: self.sample_chars]
        letters = len(_LETTER.findall(sample))
        if not letters:
            return "und", 0.0
        cjk = len(_CJK.findall(sample)) / letters
        if cjk >= self.cjk_ratio:
            kana = len(_KANA.findall(sample)) / letters
            hangul = len(_HANGUL.findall(sample)) / letters
            if kana < 0.05 and hangul < 0.05:
                return "zh", round(min(1.0, 0.5 + cjk), 4)
        if self.en_function_ratio and cjk < 0.05:
            words = _LATIN_WORD.findall(sample.lower())
            if len(words) >= 20:
                share = sum(w in EN_FUNCTION_WORDS for w in words) / len(words)
                if share >= self.en_function_ratio:
                    return "en", round(min(1.0, 0.5 + share), 4)
        code, prob = _classify(self._langid(), sample.lower())  # capitals (titles, contracts) mislead langid
        return code, round(float(prob), 4)

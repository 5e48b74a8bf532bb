"""Unicode and whitespace normalisation: one normal form (NFC by default, which keeps CJK
full-width punctuation as it is), no control or invisible format characters, single spaces,
no trailing spaces and a bounded number of blank lines."""

from __future__ import annotations

import re
import unicodedata

from lightseek.data.pipeline.config import NormalizeConfig

_NEWLINES = re.compile(r"\r\n?|[\x0b\x0c\x1c-\x1e\x85\u2028\u2029]")
# C0/C1 controls except tab and newline, zero-width and bidi marks, BOM, soft hyphen, noncharacters
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1b\x1f\x7f-\x84\x86-\x9f\xad\u200b-\u200f\u202a-\u202e"
                      r"\u2060-\u2064\u206a-\u206f\ufeff\ufff9-\ufffb\ufffe\uffff]")
_SPACES = re.compile(r"[^\S\n]+")  # any whitespace but newline, incl. NBSP and the ideographic space
_LINE_EDGES = re.compile(r" ?\n ?")


def normalize_text(text: str, cfg: NormalizeConfig) -> str:
    """``text`` normalised as ``cfg`` says, stripped at both ends."""
    if cfg.form != "none":
        text = unicodedata.normalize(cfg.form, text)
    text = _NEWLINES.sub("\n", text)
    if cfg.strip_control:
        text = _CONTROL.sub("", text)
    if cfg.collapse_spaces:
        text = _LINE_EDGES.sub("\n", _SPACES.sub(" ", text))
    if cfg.max_blank_lines >= 0:
        keep = "\n" * (cfg.max_blank_lines + 1)
        text = re.sub(r"\n{" + str(cfg.max_blank_lines + 2) + ",}", keep, text)
    return text.strip()

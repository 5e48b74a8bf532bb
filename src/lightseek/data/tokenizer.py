"""BPE tokenizers: a thin wrapper over the `tokenizers` library.

Two kinds load here. A *native* tokenizer (trained by lightseek) is byte-level BPE with no
normalizer, so every Unicode string round-trips exactly (`decode(encode(s)) == s`), and the
special tokens in `SPECIAL_TOKENS` hold ids 0..5. An *imported* tokenizer (a pretrained model's,
written by `lightseek import`) is any BPE `tokenizer.json` with a `tokenizer_config.json` beside
it that names its chat template and its end-of-sequence token (`ChatSpec`).

Special tokens are only produced from text when the caller asks (`allow_special=True`), so user
text that happens to contain "<|end|>" or "<|im_start|>" stays plain text.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from tokenizers import Tokenizer as _HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from lightseek.errors import CheckpointError, ConfigError, DataError
from lightseek.fileio import atomic_write_text

SPECIAL_TOKENS = ["<|endoftext|>", "<|pad|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
# Tokens that close a turn in common chat templates; those a template uses also end generation.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<|endoftext|>", "<|end_of_text|>",
                      "</s>", "<end_of_turn>", "<|return|>")


def end_of_turn_tokens(template: str | None, vocab, eos: str) -> tuple[str, ...]:
    """Tokens the chat template closes turns with (besides the end-of-sequence token), which end
    a reply as well."""
    known = set(vocab)
    return tuple(t for t in END_OF_TURN_TOKENS if t != eos and t in known and template and t in template)


@dataclass(frozen=True)
class ChatSpec:
    """What an imported tokenizer carries beside its vocabulary (``tokenizer_config.json``)."""

    chat_template: str | None
    eos_token: str
    bos_token: str | None = None
    pad_token: str | None = None
    end_tokens: tuple[str, ...] = ()  # further tokens that end a reply (end of turn)

    @classmethod
    def from_json(cls, data: dict, origin: str) -> ChatSpec:
        def token(key: str) -> str | None:
            value = data.get(key)
            if isinstance(value, dict):  # transformers writes AddedToken objects as dicts
                value = value.get("content")
            if value is not None and not isinstance(value, str):
                raise CheckpointError(f"{origin}: '{key}' must be a token string, got {value!r}")
            return value

        template = data.get("chat_template")
        if isinstance(template, list):  # named templates: take the default one
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default") or next(iter(named.values()), None)
        if template is not None and not isinstance(template, str):
            raise CheckpointError(f"{origin}: 'chat_template' must be a string")
        eos = token("eos_token")
        if not eos:
            raise CheckpointError(f"{origin}: no 'eos_token' (the token that ends a sequence)")
        ends = data.get("end_tokens", [])
        if not isinstance(ends, list) or not all(isinstance(t, str) for t in ends):
            raise CheckpointError(f"{origin}: 'end_tokens' must be a list of token strings")
        return cls(template, eos, token("bos_token"), token("pad_token"), tuple(ends))

    def to_json(self) -> dict:
        return {"chat_template": self.chat_template, "bos_token": self.bos_token, "eos_token": self.eos_token,
                "pad_token": self.pad_token, "end_tokens": list(self.end_tokens)}


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """The inverse of GPT-2's byte -> printable character map used by ByteLevel."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    shift = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + shift)
            shift += 1
    return {chr(c): b for b, c in zip(printable, chars)}


class Tokenizer:
    """A BPE tokenizer, native or imported (see the module docstring); `train` or `load` it."""

    def __init__(self, hf: _HFTokenizer, *, origin: str = "<memory>", chat: ChatSpec | None = None) -> None:
        serialized = hf.to_str()
        spec = json.loads(serialized)
        if chat is None:
            _check_compatible(hf, spec, origin)
        self.chat = chat
        # Two engines from one definition: `_plain` treats special-token strings as text,
        # `_special` splits them out. No shared mutable flag, so encoding is thread-safe.
        self._plain = _HFTokenizer.from_str(serialized)
        self._plain.encode_special_tokens = True
        self._special = _HFTokenizer.from_str(serialized)
        self._special.encode_special_tokens = False
        self._serialized = serialized
        self._vocab_size = self._special.get_vocab_size(with_added_tokens=True)
        self._token_bytes: dict[int, bytes] = {}
        decoder = spec.get("decoder") or {}
        self._byte_level = decoder.get("type") == "ByteLevel"
        # SentencePiece-style decoders drop the space that encoding put before the first word
        self.strips_first_space = any(d.get("type") == "Strip" and d.get("start") for d in decoder.get("decoders", []))
        # end_ids: the ids that end a generation (end of text, end of a chat turn)
        if chat is None:
            self._special_ids = frozenset(range(len(SPECIAL_TOKENS)))
            self._eot_id, self._pad_id = 0, 1
            self.end_ids = (0, self.token_id("<|end|>"))
        else:
            self._special_ids = frozenset(t["id"] for t in spec.get("added_tokens", []) if t.get("special"))
            self._eot_id = self._required_id(chat.eos_token, "eos_token", origin)
            self._pad_id = self._required_id(chat.pad_token, "pad_token", origin) if chat.pad_token else self._eot_id
            ends = [self._eot_id] + [self._required_id(t, "end_tokens", origin) for t in chat.end_tokens]
            self.end_ids = tuple(dict.fromkeys(ends))

    def _required_id(self, token: str, key: str, origin: str) -> int:
        tid = self._special.token_to_id(token)
        if tid is None:
            raise CheckpointError(f"{origin}: {key} {token!r} is not in the vocabulary")
        return tid

    # ------------------------------------------------------------------ building
    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> Tokenizer:
        """Learn a vocabulary of at most `vocab_size` tokens (specials + 256 bytes + merges)."""
        floor = 256 + len(SPECIAL_TOKENS)
        if not isinstance(vocab_size, int) or vocab_size <= floor:
            raise ConfigError(f"vocab_size must be an integer > {floor}, got {vocab_size!r}")
        if not isinstance(min_frequency, int) or min_frequency < 1:
            raise ConfigError(f"min_frequency must be an integer >= 1, got {min_frequency!r}")
        hf = _HFTokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=list(SPECIAL_TOKENS),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        hf.train_from_iterator(texts, trainer=trainer)
        return cls(hf, origin="<trained>")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Tokenizer:
        """Load a tokenizer.json file, or the tokenizer.json inside a directory."""
        file = Path(path)
        if file.is_dir():
            file = file / TOKENIZER_FILE
        try:
            text = file.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise CheckpointError(f"tokenizer file not found: {file}") from None
        except (OSError, UnicodeDecodeError) as e:
            raise CheckpointError(f"cannot read tokenizer file {file}: {e}") from None
        try:
            hf = _HFTokenizer.from_str(text)
        except Exception as e:  # the library raises a bare Exception for bad JSON
            first_line = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise CheckpointError(f"corrupt tokenizer file {file}: {first_line}") from None
        return cls(hf, origin=str(file), chat=read_chat_spec(file.with_name(TOKENIZER_CONFIG_FILE)))

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write tokenizer.json atomically and return the file written.

        `path` is a directory (existing, or a new path without a suffix, created) or a file path.
        """
        target = Path(path)
        if target.is_dir() or (not target.suffix and not target.exists()):
            target = target / TOKENIZER_FILE
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(target, self._serialized)
            if self.chat is not None:
                atomic_write_text(target.with_name(TOKENIZER_CONFIG_FILE),
                                  json.dumps(self.chat.to_json(), indent=2, ensure_ascii=False))
        except OSError as e:
            reason = e.strerror or e
            raise CheckpointError(f"cannot write tokenizer file {target}: {reason}") from None
        return target

    # ------------------------------------------------------------------ properties
    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def eot_id(self) -> int:
        """End of a document (native) or the model's end-of-sequence token (imported)."""
        return self._eot_id

    @property
    def pad_id(self) -> int:
        return self._pad_id

    @property
    def bos_id(self) -> int | None:
        """The imported model's beginning-of-sequence token, if it has one."""
        return self._special.token_to_id(self.chat.bos_token) if self.chat and self.chat.bos_token else None

    @property
    def sha256(self) -> str:
        """Hash of the canonical serialization (exactly the bytes `save` writes)."""
        return hashlib.sha256(self._serialized.encode("utf-8")).hexdigest()

    def token_id(self, token: str) -> int:
        """Id of a token string in the vocabulary (e.g. "<|end|>"); KeyError if absent."""
        tid = self._special.token_to_id(token)
        if tid is None:
            raise KeyError(f"token {token!r} is not in the vocabulary")
        return tid

    def is_special(self, token_id: int) -> bool:
        return token_id in self._special_ids

    # ------------------------------------------------------------------ encode / decode
    def encode(self, text: str, *, allow_special: bool = False) -> list[int]:
        """Token ids for `text`. Special-token strings become special ids only if allowed."""
        engine = self._special if allow_special else self._plain
        try:
            return engine.encode(text, add_special_tokens=False).ids
        except TypeError:
            _raise_if_not_unicode([text])
            raise

    def encode_batch(self, texts: Sequence[str], *, allow_special: bool = False) -> list[list[int]]:
        """`encode` for many texts at once (parallel inside the library)."""
        engine = self._special if allow_special else self._plain
        texts = list(texts)
        try:
            return [e.ids for e in engine.encode_batch(texts, add_special_tokens=False)]
        except TypeError:
            _raise_if_not_unicode(texts)
            raise

    def decode(self, ids: Iterable[int], *, skip_special: bool = True) -> str:
        """Text for `ids`; special tokens are dropped unless `skip_special=False`."""
        ids = [self._check_id(i) for i in ids]
        return self._special.decode(ids, skip_special_tokens=skip_special)

    def to_json_str(self) -> str:
        """The tokenizer's definition in the `tokenizers` JSON format (what `save` writes)."""
        return self._serialized

    def token_bytes(self, token_id: int) -> bytes:
        """The raw bytes one token stands for (a special token gives its UTF-8 text)."""
        token_id = self._check_id(token_id)
        cached = self._token_bytes.get(token_id)
        if cached is not None:
            return cached
        token = self._special.id_to_token(token_id)
        if token_id in self._special_ids:
            raw = token.encode("utf-8")
        elif self._byte_level:
            table = _byte_decoder()
            if all(c in table for c in token):
                raw = bytes(table[c] for c in token)
            else:  # an added (non-special) token written in plain text
                raw = token.encode("utf-8")
        elif len(token) == 6 and token.startswith("<0x") and token.endswith(">"):  # byte fallback
            raw = bytes([int(token[3:5], 16)])
        else:  # SentencePiece-style: "▁" stands for a space
            raw = token.replace("\u2581", " ").encode("utf-8")
        self._token_bytes[token_id] = raw
        return raw

    def _check_id(self, token_id: int) -> int:
        token_id = int(token_id)
        if not 0 <= token_id < self._vocab_size:
            raise ValueError(
                f"token id {token_id} is outside the vocabulary (size {self._vocab_size})"
            )
        return token_id

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, sha256={self.sha256[:12]})"


class StreamDecoder:
    """Turns ids into text one at a time, never emitting half of a UTF-8 character.

    Concatenating every `push` result and the final `flush` equals `tokenizer.decode(ids)`.
    """

    def __init__(self, tokenizer: Tokenizer, *, skip_special: bool = True) -> None:
        self._tokenizer = tokenizer
        self._skip_special = skip_special
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._strip_space = getattr(tokenizer, "strips_first_space", False)  # until the first text

    def push(self, token_id: int) -> str:
        """Feed one id; return the text completed by it (possibly "")."""
        if self._skip_special and self._tokenizer.is_special(token_id):
            return ""
        text = self._utf8.decode(self._tokenizer.token_bytes(token_id))
        if self._strip_space and text:
            text, self._strip_space = text[1:] if text[0] == " " else text, False
        return text

    def flush(self) -> str:
        """End of stream: return what is held back (an incomplete tail becomes U+FFFD)."""
        text = self._utf8.decode(b"", final=True)
        self._utf8.reset()
        return text


def _raise_if_not_unicode(texts: list[str]) -> None:
    """Explain the library's TypeError for text with unpaired surrogates (e.g. from JSON)."""
    for i, text in enumerate(texts):
        if isinstance(text, str):
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as e:
                raise DataError(
                    f"text {i} is not valid Unicode: unpaired surrogate at character {e.start}"
                ) from None


def read_chat_spec(file: Path) -> ChatSpec | None:
    """The ``tokenizer_config.json`` beside an imported tokenizer, or None if there is none."""
    if not file.is_file():
        return None
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"corrupt tokenizer config {file}: {e}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"corrupt tokenizer config {file}: expected a JSON object")
    return ChatSpec.from_json(data, str(file))


_NOT_NATIVE_HINT = " (an imported model's tokenizer needs its tokenizer_config.json beside it)"


def _check_compatible(hf: _HFTokenizer, spec: dict, origin: str) -> None:
    """Byte-level BPE, no normalizer, our special tokens at ids 0..5: else not ours."""
    kinds = [(spec.get(part) or {}).get("type") for part in ("model", "decoder", "normalizer")]
    if kinds != ["BPE", "ByteLevel", None]:
        raise CheckpointError(
            f"{origin} is not a lightseek tokenizer: expected a byte-level BPE without a "
            f"normalizer, found model/decoder/normalizer {kinds}{_NOT_NATIVE_HINT}"
        )
    for expected_id, token in enumerate(SPECIAL_TOKENS):
        if hf.token_to_id(token) != expected_id:
            raise CheckpointError(
                f"{origin} is not a lightseek tokenizer: {token!r} must have id {expected_id}{_NOT_NATIVE_HINT}"
            )

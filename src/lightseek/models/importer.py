"""`lightseek import SRC --out CKPT`: a GGUF file or a Hugging Face folder into a lightseek
checkpoint (config.json, model.safetensors, tokenizer.json, tokenizer_config.json).

The checkpoint is written atomically: every check (architecture, quant types, tensor names,
shapes) runs before the folder appears, and a failure leaves nothing behind.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch

from lightseek.data.tokenizer import TOKENIZER_CONFIG_FILE, ChatSpec, Tokenizer, end_of_turn_tokens
from lightseek.errors import CheckpointError
from lightseek.fileio import file_sha256, write_dir_atomic
from lightseek.model.checkpoint import CONFIG, WEIGHTS
from lightseek.model.config import ModelConfig
from lightseek.model.transformer import Transformer
from lightseek.models.gguf import GGUFModel
from lightseek.models.hf import config_from_hf, convert_state
from lightseek.progress import progress


def import_model(src: str | Path, out: str | Path, *, max_seq_len: int | None = None,
                 source: dict | None = None, show_progress: bool = True) -> Path:
    """Import ``src`` (a .gguf file or a Hugging Face folder) into checkpoint folder ``out``."""
    src = Path(src)
    if not src.exists():
        raise CheckpointError(f"import source not found: {src}")
    if src.is_file():
        reader = _GGUFSource(src)
    elif (src / "config.json").is_file():
        reader = _HFSource(src)
    else:
        raise CheckpointError(f"{src}: neither a .gguf file nor a folder with config.json")
    cfg = config_from_hf(reader.config, reader.origin, max_seq_len)
    tokenizer = reader.tokenizer()
    names = reader.names()
    with progress(len(names), f"importing {src.name}") as step:
        def read(name: str) -> torch.Tensor:
            t = reader.read(name)
            step(1)
            return t.float()

        state = convert_state(cfg, names, read, reader.origin)
    model = build_model(cfg, state, reader.origin)
    meta_source = {"kind": reader.kind, "path": str(src.resolve()), **(source or {})}
    if src.is_file():
        meta_source.setdefault("sha256", file_sha256(src))

    def fill(tmp: Path) -> None:
        from safetensors.torch import save_file

        from lightseek import __version__
        from lightseek.fileio import write_json_atomic
        from lightseek.model.checkpoint import model_state

        write_json_atomic(tmp / CONFIG, {"lightseek_version": __version__, "model": cfg.to_dict(),
                                         "source": meta_source, "architecture": reader.config["model_type"]})
        save_file(model_state(model), str(tmp / WEIGHTS), metadata={"format": "pt"})
        tokenizer.save(tmp)

    return write_dir_atomic(out, fill)


def build_model(cfg: ModelConfig, state: dict[str, torch.Tensor], origin: str) -> Transformer:
    """The model with ``state`` loaded. Routing state the source has no notion of (selection bias,
    dynamic threshold) keeps its initial value; every weight must be present with its shape."""
    model = Transformer(cfg).eval()
    expected = model.state_dict()
    if cfg.tie_embeddings:
        expected.pop("head.weight")
    defaults = {k for k in expected if k.endswith(("router.bias_E", "router.threshold"))}  # unless given
    missing = [k for k in expected if k not in state and k not in defaults]
    if missing:
        raise CheckpointError(f"{origin}: tensor for {missing[0]} is missing"
                              + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    for k, v in state.items():
        if k not in expected:
            raise CheckpointError(f"{origin}: unexpected tensor {k}")
        if tuple(v.shape) != tuple(expected[k].shape):
            raise CheckpointError(f"{origin}: tensor {k} has shape {tuple(v.shape)}, the config implies "
                                  f"{tuple(expected[k].shape)}")
    model.load_state_dict(state, strict=False)
    return model


class _GGUFSource:
    kind = "gguf"

    def __init__(self, path: Path):
        self.gguf = GGUFModel(path)
        self.origin = self.gguf.origin
        self.config = self.gguf.hf_config()

    def tokenizer(self) -> Tokenizer:
        hf, chat = self.gguf.tokenizer()
        return Tokenizer(hf, origin=self.origin, chat=chat)

    def names(self) -> list[str]:
        return self.gguf.tensor_names()

    def read(self, name: str) -> torch.Tensor:
        return self.gguf.read(name)


class _HFSource:
    """A transformers folder: config.json, one or more .safetensors files, tokenizer files."""
    kind = "hf"

    def __init__(self, folder: Path):
        self.folder, self.origin = folder, str(folder)
        try:
            self.config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{folder}/config.json is not valid JSON ({e})") from None
        files = sorted(folder.glob("*.safetensors"))
        if not files:
            raise CheckpointError(f"{folder}: no .safetensors weights (PyTorch .bin files are not read: "
                                  "they are pickles that can run code)")
        self._where: dict[str, Path] = {}
        self._open: dict[Path, object] = {}
        for f in files:
            for name in self._handle(f).keys():  # noqa: SIM118 (a safetensors handle, not a dict)
                self._where[name] = f

    def _handle(self, f: Path):
        from safetensors import SafetensorError, safe_open

        if f not in self._open:
            try:
                self._open[f] = safe_open(str(f), framework="pt")
            except (SafetensorError, OSError) as e:
                raise CheckpointError(f"{f}: truncated or corrupt safetensors file ({e})") from None
        return self._open[f]

    def names(self) -> list[str]:
        return list(self._where)

    def read(self, name: str) -> torch.Tensor:
        from safetensors import SafetensorError

        try:
            return self._handle(self._where[name]).get_tensor(name)
        except (SafetensorError, OSError, RuntimeError) as e:
            raise CheckpointError(f"{self._where[name]}: tensor {name} cannot be read ({e})") from None

    def tokenizer(self) -> Tokenizer:
        from tokenizers import Tokenizer as HFTokenizer

        tok_file = self.folder / "tokenizer.json"
        if not tok_file.is_file():
            raise CheckpointError(f"{self.folder}: no tokenizer.json (a slow tokenizer alone is not read)")
        try:
            hf = HFTokenizer.from_file(str(tok_file))
        except Exception as e:  # the library raises a bare Exception
            raise CheckpointError(f"{tok_file}: not a readable tokenizer ({str(e).splitlines()[0]})") from None
        return Tokenizer(hf, origin=str(tok_file), chat=self._chat_spec(hf))

    def _chat_spec(self, hf) -> ChatSpec:
        cfg_file = self.folder / TOKENIZER_CONFIG_FILE
        data = json.loads(cfg_file.read_text(encoding="utf-8")) if cfg_file.is_file() else {}
        jinja = self.folder / "chat_template.jinja"  # transformers 5 keeps the template beside
        if jinja.is_file():
            data["chat_template"] = jinja.read_text(encoding="utf-8")
        vocab_token: Callable[[int], str | None] = hf.id_to_token
        gen = self.folder / "generation_config.json"
        gen_eos = json.loads(gen.read_text(encoding="utf-8")).get("eos_token_id") if gen.is_file() else None
        if not data.get("eos_token"):
            eos_id = gen_eos if gen_eos is not None else self.config.get("eos_token_id")
            eos_id = eos_id[0] if isinstance(eos_id, list) else eos_id
            if eos_id is None or vocab_token(int(eos_id)) is None:
                raise CheckpointError(f"{self.folder}: no end-of-sequence token in tokenizer_config.json, "
                                      "generation_config.json or config.json")
            data["eos_token"] = vocab_token(int(eos_id))
        spec = ChatSpec.from_json(data, str(cfg_file))
        ends = list(end_of_turn_tokens(spec.chat_template, hf.get_vocab(with_added_tokens=True), spec.eos_token))
        for tid in gen_eos if isinstance(gen_eos, list) else []:  # every id generation stops at
            token = vocab_token(int(tid))
            if token and token != spec.eos_token and token not in ends:
                ends.append(token)
        return ChatSpec(spec.chat_template, spec.eos_token, spec.bos_token, spec.pad_token, tuple(ends))

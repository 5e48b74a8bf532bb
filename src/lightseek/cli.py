"""The `lightseek` command. Subcommands import their (heavy) modules only when they run, so
`lightseek --help` is instant and needs only the core install.

Every subcommand takes ``--config recipes/NAME.yaml`` and dotted overrides of the run config
(``--train.lr=3e-4``, ``--model.n_layers 4``); unknown or mistyped keys are errors.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from lightseek import __version__
from lightseek.errors import ConfigError, LightseekError

EPILOG = ("Any subcommand also takes --config recipes/NAME.yaml and dotted overrides of the run "
          "config, e.g. --train.lr=3e-4 --model.router_mode=topk. `lightseek config` lists every key.")


def _run_config(args: argparse.Namespace, overrides: list[str], base: dict | None = None):
    from lightseek.train.config import load_run_config

    return load_run_config(args.config, overrides, base=base)


# --- subcommands -----------------------------------------------------------------------------

def cmd_quickstart(args, overrides) -> int:
    if args.from_scratch:
        from lightseek.quickstart import quickstart

        quickstart(_run_config(args, overrides, base=_quickstart_base()), fresh=args.fresh)
        return 0
    from lightseek.quickstart_real import real_quickstart

    if overrides or args.config:
        raise LightseekError("--config and dotted overrides set the --from-scratch run; the real-model quickstart "
                             "takes --model, --target-k and --out")
    real_quickstart(args.out, args.model, args.target_k, fresh=args.fresh)
    return 0


def _quickstart_base() -> dict:
    from lightseek.quickstart import QUICKSTART

    return QUICKSTART


def cmd_tokenizer_train(args, overrides) -> int:
    from lightseek.data.prepare import documents_from, train_tokenizer

    cfg = _run_config(args, overrides)
    inputs = args.inputs or cfg.data.inputs
    tok = train_tokenizer(documents_from(inputs, cfg.data.text_field)(), cfg.tokenizer.vocab_size,
                          cfg.tokenizer.train_bytes)
    path = tok.save(args.out)
    print(f"tokenizer with {tok.vocab_size} tokens written to {path}")
    return 0


def cmd_data_prepare(args, overrides) -> int:
    from lightseek.data.prepare import documents_from, prepare_dataset
    from lightseek.data.tokenizer import Tokenizer

    cfg = _run_config(args, overrides)
    inputs = args.inputs or cfg.data.inputs
    tok_path = args.tokenizer or cfg.tokenizer.path
    manifest = prepare_dataset(
        documents_from(inputs, cfg.data.text_field), args.out,
        tokenizer=Tokenizer.load(tok_path) if tok_path else None, vocab_size=cfg.tokenizer.vocab_size,
        tokenizer_bytes=cfg.tokenizer.train_bytes, max_bytes=cfg.data.max_bytes,
        val_fraction=cfg.data.val_fraction, seed=cfg.train.seed, overwrite=args.overwrite)
    splits = manifest["splits"]
    print(f"{args.out}: train {splits['train']['tokens']:,} tokens, val {splits['val']['tokens']:,} "
          f"tokens from {len(manifest['sources'])} sources")
    return 0


def cmd_data_pipeline(args, overrides) -> int:
    from lightseek.data.pipeline.command import pipeline_command

    pipeline_command(args.config, overrides, out=args.out, overwrite=args.overwrite, quiet=args.quiet)
    return 0


def cmd_train(args, overrides) -> int:
    from lightseek.train.pretrain import pretrain

    cfg = _run_config(args, overrides)
    summary = pretrain(cfg, resume=args.resume, show_progress=not args.quiet)
    if int(os.environ.get("RANK", "0")) == 0:
        _print_summary(summary)
    return 0


def _print_summary(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="run summary", show_header=False)
    for key in ("steps", "tokens_seen", "tokens_per_s", "wall_s", "val_loss", "val_ppl", "avg_k",
                "max_vio", "dead_experts", "checkpoint"):
        if key in summary:
            v = summary[key]
            table.add_row(key, f"{v:,.4g}" if isinstance(v, float) else str(v))
    Console().print(table)


def cmd_eval(args, overrides) -> int:
    from lightseek.eval.run import run_eval, run_tasks
    from lightseek.model.checkpoint import read_checkpoint_config

    if args.tasks:
        if args.data or args.routing or args.kl_ref:
            raise LightseekError("--tasks scores multiple-choice files; run --data / --routing / --kl-ref separately")
        print(run_tasks(args.checkpoint, args.tasks, args.limit)["text"])
        return 0
    # the run's own settings (sequence length, batch, text field) unless overridden
    cfg = _run_config(args, overrides, base=read_checkpoint_config(args.checkpoint).get("run"))
    result = run_eval(args.checkpoint, cfg, data=args.data, split=args.split, routing=args.routing,
                      plot=args.plot, kl_ref=args.kl_ref)
    print(result["text"])
    return 0


def cmd_quant(args, overrides) -> int:
    from lightseek.quant.run import load_quant_config, quantize_checkpoint

    flags = [f"--quant.{key}={value}" for key, value in (("bits", args.bits), ("group_size", args.group),
             ("method", args.method), ("policy", args.policy), ("max_bits", args.max_bits), ("kernel", args.kernel),
             ("tune_steps", args.tune_steps), ("activations", args.activations))
             if value is not None]
    if args.calib:
        import json

        flags.append(f"--quant.calib.files={json.dumps(args.calib, ensure_ascii=False)}")
    cfg = load_quant_config(args.config, overrides + flags)
    r = quantize_checkpoint(args.checkpoint, cfg, args.out, overwrite=args.overwrite, show_progress=not args.quiet)
    policy = f"budget {cfg.max_bits}: {r['at_8_bits']} at 8 bits" if cfg.policy == "budget" else cfg.policy
    print(f"{r['layers']} layers quantized ({policy}, {cfg.method}); {r['bits_per_weight']:.2f} bits/weight; "
          f"{r['size_bytes'] / 2**20:.2f} MiB ({r['source_bytes'] / r['size_bytes']:.1f}x smaller) -> {r['out']}")
    if r["tuning"]:
        t = r["tuning"]
        print(f"scales and offsets tuned for {t['steps']} steps in {t['seconds']:.0f} s: KL to the source "
              f"{t['kl_first']:.4f} -> {t['kl_last']:.4f} (calibration windows)")
    return 0


def cmd_moefy(args, overrides) -> int:
    from lightseek.moefy.config import load_moefy_config
    from lightseek.moefy.run import moefy_checkpoint, summary_text

    flags = [f"--moefy.{key}={value}" for key, value in (
        ("experts", args.experts), ("shared_dim", args.shared), ("split", args.split), ("router", args.router),
        ("target_k", args.target_k), ("top_k", args.top_k)) if value is not None]
    if args.calib:
        import json

        flags.append(f"--moefy.calib.files={json.dumps(args.calib, ensure_ascii=False)}")
    cfg = load_moefy_config(args.config, overrides + flags)
    print(summary_text(moefy_checkpoint(args.checkpoint, cfg, args.out, overwrite=args.overwrite,
                                        show_progress=not args.quiet)))
    return 0


def cmd_shrink(args, overrides) -> int:
    from lightseek.moefy.shrink import shrink_checkpoint

    if overrides:
        raise LightseekError(f"shrink takes no config overrides, got {' '.join(overrides)}")
    r = shrink_checkpoint(args.checkpoint, args.out, layers=args.layers, ffn_share=args.ffn_share,
                          calib=args.calib, overwrite=args.overwrite)
    if "block_influence" in r:
        print("block influence (1 - cos(in, out)): " + " ".join(f"{i}:{v:.3f}" for i, v in enumerate(r["block_influence"])))
    if "layers_kept" in r:
        print(f"blocks kept: {', '.join(map(str, r['layers_kept']))}")
    for layer in r.get("ffn_layers", []):
        print(f"layer {layer['layer']:3d}  FFN importance kept {layer['importance_kept']:.3f}  "
              f"output error {layer['rel_error']:.3f}")
    p = r["params"]
    print(f"{p['before'] / 1e6:.1f}M -> {p['after'] / 1e6:.1f}M parameters ({p['after'] / p['before']:.0%}); "
          f"written to {r['out']}; train it against the original with `lightseek distill train --student={r['out']} "
          f"--teachers.general={args.checkpoint} ...`")
    return 0


def cmd_generate(args, overrides) -> int:
    from lightseek.data.chat import encode_chat
    from lightseek.model.generate import generate_text
    from lightseek.models.commands import load_for_generation

    cfg = _run_config(args, overrides)
    model, tokenizer, use_adapter = load_for_generation(args.checkpoint, args.adapter)
    prompt = args.prompt
    if args.chat:
        messages = ([{"role": "system", "content": args.system}] if args.system else []) + \
            [{"role": "user", "content": prompt}]
        prompt = encode_chat(tokenizer, messages, add_generation_prompt=True)[0]
    n_prompt = len(prompt) if args.chat else len(tokenizer.encode(prompt))
    if n_prompt == 0 or n_prompt >= model.cfg.max_seq_len:
        raise LightseekError(f"--prompt: {n_prompt} tokens; it must be non-empty and shorter than the "
                             f"model's context of {model.cfg.max_seq_len} tokens")
    sys.stdout.write(args.prompt if not args.chat else "")
    sys.stdout.flush()

    def show(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    with use_adapter():
        generate_text(model, tokenizer, prompt, cfg.generate, on_text=show)
    sys.stdout.write("\n")
    return 0


def _finetune_config(args, overrides):
    from lightseek.adapters.finetune import load_finetune_config

    flags = []
    if args.base:
        flags.append(f"--base={args.base}")
    if args.name:
        flags.append(f"--name={args.name}")
    if args.data:
        import json

        flags.append(f"--data.files={json.dumps(args.data, ensure_ascii=False)}")
    return load_finetune_config(args.config, overrides + flags)


def _finetune(args, overrides, mode: str) -> int:
    from rich.console import Console

    from lightseek.adapters.finetune import finetune

    console = Console()
    summary = finetune(_finetune_config(args, overrides), mode, resume=args.resume,
                       show_progress=not args.quiet, console=console)
    if int(os.environ.get("RANK", "0")) == 0:
        pct = 100 * summary["trainable_parameters"] / summary["model_parameters"]
        console.print(f"trainable parameters: {summary['trainable_parameters']:,} ({pct:.2f}% of "
                      f"{summary['model_parameters']:,})")
        _print_summary({**summary, "checkpoint": summary["saved"]})
    return 0


def cmd_lora_train(args, overrides) -> int:
    return _finetune(args, overrides, "lora")


def cmd_sft(args, overrides) -> int:
    return _finetune(args, overrides, "full")


def cmd_lora_merge(args, overrides) -> int:
    from pathlib import Path

    from lightseek.adapters.lora import merge_lora
    from lightseek.adapters.store import base_fingerprint, load_adapter, read_adapter_meta, resolve_adapter
    from lightseek.model.checkpoint import (
        TOKENIZER,
        load_model,
        read_checkpoint_config,
        resolve_checkpoint,
        save_checkpoint,
    )

    meta = read_adapter_meta(args.adapter)
    base = args.base or meta.get("base", {}).get("path")
    if not base:
        raise LightseekError(f"adapter {args.adapter} records no base checkpoint; pass --base")
    out = Path(args.out).resolve()
    for keep in (Path(base).resolve(), resolve_adapter(args.adapter).resolve()):
        if out == keep or out in keep.parents or keep in out.parents:
            raise LightseekError(f"--out {args.out} overlaps {keep}: choose a new folder")
    is_checkpoint = (out / "config.json").is_file()
    if out.exists() and not (args.overwrite and is_checkpoint):
        raise LightseekError(f"--out {args.out} exists{'' if is_checkpoint else ' and is not a checkpoint'}; choose a "
                             f"new folder{' (or pass --overwrite to replace that checkpoint)' if is_checkpoint else ''}")
    base_dir = resolve_checkpoint(base)
    if "quantization" in read_checkpoint_config(base_dir):
        raise LightseekError(f"--base {base} is quantized: merge the adapter into its full-precision base, then "
                             f"quantize the merged checkpoint (`lightseek quant`)")
    model = load_model(base_dir)
    info = load_adapter(model, args.adapter, base_fingerprint(base_dir)["sha256"])
    merge_lora(model, info.name)
    save_checkpoint(args.out, model, tokenizer_file=base_dir / TOKENIZER,
                    run_config=read_checkpoint_config(base_dir).get("run"),
                    extra={"merged_adapter": {"name": info.name, "path": str(info.path.resolve()),
                                              "domain": meta.get("domain", ""), "base": meta.get("base", {})}})
    print(f"adapter {info.name} merged into {args.out}")
    return 0


def cmd_lora_list(args, overrides) -> int:
    from lightseek.adapters.store import list_adapters

    found = list_adapters(args.dir)
    if not found:
        print(f"no adapters under {args.dir}")
        return 0
    print(f"{'name':16} {'domain':10} {'rank':>4} {'params':>9} {'step':>6} {'val ppl':>8}  base      path")
    for a in found:
        m = a.meta
        ppl = m.get("metrics", {}).get("val_ppl")
        print(f"{a.name:16} {m.get('domain') or '-':10} {m['lora'].get('rank', '?'):>4} "
              f"{m.get('trainable_parameters', 0):>9,} {m.get('step', '-'):>6} "
              f"{f'{ppl:.2f}' if ppl else '-':>8}  {str(m.get('base', {}).get('sha256', '?'))[:8]}  {a.path}")
    return 0


def cmd_lora_eval(args, overrides) -> int:
    from lightseek.adapters.evaluate import evaluate_adapters
    from lightseek.adapters.store import read_adapter_meta

    base = args.base or read_adapter_meta(args.adapters[0]).get("base", {}).get("path")
    if not base:
        raise LightseekError("the adapter records no base checkpoint; pass --base")
    result = evaluate_adapters(base, args.adapters, domain=args.data, general=args.text,
                               seq_len=args.seq_len, batch_size=args.batch_size, split=args.split)
    print(result["text"])
    return 0


def cmd_serve(args, overrides) -> int:
    try:
        import fastapi  # noqa: F401
        import prometheus_client  # noqa: F401
        import uvicorn
    except ImportError as e:
        raise LightseekError(f"the server needs FastAPI, uvicorn and prometheus-client ({e.name} is missing): "
                             "pip install 'lightseek[serve]'") from None
    import threading

    import torch

    from lightseek.adapters.store import base_fingerprint, list_adapters, load_adapter
    from lightseek.data.tokenizer import Tokenizer
    from lightseek.model.checkpoint import load_model, read_checkpoint_config, resolve_checkpoint
    from lightseek.model.config import ModelConfig
    from lightseek.model.kv_cache import SlotCache
    from lightseek.serve.app import EngineHost, PendingHost, build_app
    from lightseek.serve.engine import Engine
    from lightseek.sockets import bind_server_socket

    # the engine shares the machine with the HTTP side (and, on loopback, with the clients):
    # PyTorch's spinning worker threads on every core would fight them for it
    torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 2) - 1))
    # The engine thread gives up the GIL inside every tensor operation and must win it back
    # from the HTTP thread afterwards; at Python's default 5 ms switch interval a burst of
    # streaming work holds the engine up for milliseconds (16 clients: 1,609 tok/s at 5 ms,
    # 1,724 at 0.5 ms, docs/results/serving.md).
    sys.setswitchinterval(0.0005)
    for flag, value in (("--max-slots", args.max_slots), ("--kv-cache-gb", args.kv_cache_gb),
                        ("--max-len", args.max_len)):
        if value is not None and value <= 0:
            raise ConfigError(f"{flag} must be positive, got {value}")
    ckpt = resolve_checkpoint(args.checkpoint)  # fail fast on a wrong path, before listening
    sock = bind_server_socket(args.host, args.port)  # before any loading: a bad port fails now
    port = sock.getsockname()[1]  # --port 0: the one the system chose
    model_id = args.name or (ckpt.parent.name if ckpt.name == "checkpoint" else ckpt.name)
    if args.kv_cache_gb:  # a budget that holds no sequence fails now, not after loading the weights
        cfg = ModelConfig.from_dict(read_checkpoint_config(ckpt)["model"])
        SlotCache.slots_within(cfg, args.kv_cache_gb * 2**30, min(args.max_len or cfg.max_seq_len, cfg.max_seq_len))
    gate = None
    if args.platform:  # keys, limits and the ledger; a bad URL or missing extra fails before listening
        from lightseek.platform.gate import Gate

        gate = Gate(args.platform)
    elif args.protect_metrics:
        raise ConfigError("--protect-metrics needs --platform (admin keys live in the platform's database)")
    moderator = None
    if args.safety:  # content safety: the classifiers and the policy load (or fail) before listening
        from lightseek.safety.cascade import Moderator

        moderator = Moderator(args.safety, args.safety_policy, args.safety_rules, args.safety_audit,
                              args.safety_policies)
    elif args.safety_policy or args.safety_rules or args.safety_audit or args.safety_policies:
        raise ConfigError("--safety-policy, --safety-policies, --safety-rules and --safety-audit need --safety FOLDER")
    pending, names = PendingHost(), []
    # answers 503 until the model is loaded
    app = build_app(pending, model_id, names, gate, args.protect_metrics, moderator)
    failed: list[BaseException] = []

    def load() -> None:
        try:
            model = load_model(ckpt)
            if args.adapters:
                sha = base_fingerprint(ckpt)["sha256"]
                for info in list_adapters(args.adapters):
                    names.append(load_adapter(model, info.path, sha, name=info.name).name)
            max_len = min(args.max_len or model.cfg.max_seq_len, model.cfg.max_seq_len)
            slots = args.max_slots or 16
            if args.kv_cache_gb:  # the budget sets the slots; --max-slots, when given, caps them
                fit = SlotCache.slots_within(model, args.kv_cache_gb * 2**30, max_len)
                slots = min(fit, args.max_slots) if args.max_slots else fit
            engine = Engine(model, Tokenizer.load(ckpt / "tokenizer.json"), max_slots=slots,
                            max_waiting=args.max_waiting, prefill_chunk=args.prefill_chunk, max_len=max_len)
            try:  # structured outputs' view of the vocabulary, now rather than on the first request
                engine.grammars.prepare()
            except ConfigError:
                pass  # llguidance is not installed: such requests get a 400 that says so
            pending.set(EngineHost(engine, usage_log=args.usage_log, on_end=gate.ended if gate else None))
            print(f"serving {model_id}" + (f" with adapters {', '.join(names)}" if names else "")
                  + f" on http://{args.host}:{port}/v1 (KV cache: {slots} sequences of up to {max_len} "
                  f"tokens, {engine.cache.bytes() / 2**30:.2f} GiB)", flush=True)
        except BaseException as e:  # reported, and the server stops
            failed.append(e)
            server.should_exit = True

    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=port, log_level="warning"))
    threading.Thread(target=load, name="lightseek-load", daemon=True).start()
    try:
        server.run(sockets=[sock])
    finally:
        if pending.target is not None:
            pending.target.close()
        if gate is not None:
            gate.close()
    if failed:
        raise failed[0]
    return 0


def cmd_distill_train(args, overrides) -> int:
    from rich.console import Console

    from lightseek.distill.train import distill_train, load_distill_config

    cfg = load_distill_config(args.config, overrides)  # --student=CKPT is a config key like any other
    summary = distill_train(cfg, resume=args.resume, show_progress=not args.quiet, console=Console(stderr=True))
    if int(os.environ.get("RANK", "0")) == 0:
        _print_summary(summary)
        for domain, ppl in summary["domains"].items():
            print(f"  {domain:<12} val ppl {ppl:.2f}")
    return 0


def cmd_distill_data(args, overrides) -> int:
    from lightseek.config import build
    from lightseek.distill.distiller import DistillerConfig, distill_data

    flags = ["--inputs=[" + ",".join(args.inputs) + "]"] if args.inputs else []  # --out=DIR is a config key
    r = distill_data(build(DistillerConfig, args.config, overrides + flags), show_progress=not args.quiet)
    stages = ", ".join(f"{k} {v}" for k, v in r["rejected_by_stage"].items()) or "none"
    print(f"{r['inputs']} inputs: {r['kept']} records written to {r['files']['data']}, {r['rejected']} rejected "
          f"({stages}) in {r['files']['rejected']}; {r['generated_now']} generations this run")
    return 0


def cmd_info(args, overrides) -> int:
    from lightseek.model.info import describe_model

    cfg = _run_config(args, overrides)
    print(describe_model(args.checkpoint, cfg.model, seq_len=cfg.train.seq_len))
    return 0


def _config_kinds() -> dict[str, tuple[str, str]]:
    """`lightseek config --for KIND`: the config class of each command and its loader."""
    return {"train": ("lightseek.train.config:RunConfig", "lightseek.train.config:load_run_config"),
            "finetune": ("lightseek.adapters.finetune:FinetuneConfig", "lightseek.adapters.finetune:load_finetune_config"),
            "distill": ("lightseek.distill.train:DistillConfig", "lightseek.distill.train:load_distill_config"),
            "distiller": ("lightseek.distill.distiller:DistillerConfig", ""),
            "pipeline": ("lightseek.data.pipeline.config:PipelineConfig", "lightseek.data.pipeline.config:load_pipeline_config"),
            "quant": ("lightseek.quant.run:QuantRunConfig", ""),
            "moefy": ("lightseek.moefy.config:MoefyRunConfig", "")}


def cmd_config(args, overrides) -> int:
    import importlib

    from lightseek.config import build, describe, to_dict

    def obj(ref: str):
        module, _, name = ref.partition(":")
        return getattr(importlib.import_module(module), name)

    kind = "finetune" if args.finetune else args.kind
    cls_ref, loader_ref = _config_kinds()[kind]
    cls = obj(cls_ref)
    if args.show:
        import yaml

        cfg = obj(loader_ref)(args.config, overrides) if loader_ref else build(cls, args.config, overrides)
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True), end="")
        return 0
    for key, default, help_text in describe(cls):
        print(f"{key:32s} {default:>14s}  {help_text}")
    return 0


def cmd_domains(args, overrides) -> int:
    from lightseek.data.domains import commands

    getattr(commands, f"run_{args.sub}")(args, overrides)
    return 0


# --- parser ----------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    from lightseek import quickstart_real  # its defaults; it imports no model code

    parser = argparse.ArgumentParser(
        prog="lightseek", epilog=EPILOG,
        description="Efficient dynamic Mixture-of-Experts language models: data, training, generation.")
    parser.add_argument("--version", action="version", version=f"lightseek {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, fn: Callable, help_text: str, parent=sub) -> argparse.ArgumentParser:
        p = parent.add_parser(name, help=help_text, description=help_text, epilog=EPILOG)
        p.add_argument("--config", metavar="YAML", help="a recipe, e.g. recipes/tiny.yaml")
        p.set_defaults(fn=fn)
        return p

    p = add("quickstart", cmd_quickstart,
            "Fetch SmolLM2-135M-Instruct, turn it into a dynamic MoE and compare it with the dense model "
            "(--from-scratch: train a tokenizer and the tiny MoE on Python's own docs and source instead).")
    p.add_argument("--fresh", action="store_true", help="delete an earlier quickstart run first")
    p.add_argument("--from-scratch", action="store_true",
                   help="the tiny pretraining loop (corpus, tokenizer, training, report, sample) instead")
    p.add_argument("--model", default=quickstart_real.DEFAULT_MODEL, help="a known model's name or a dense checkpoint")
    p.add_argument("--target-k", type=float, default=quickstart_real.DEFAULT_TARGET_K,
                   help="experts per token on average, of 16")
    p.add_argument("--out", default=quickstart_real.DEFAULT_OUT, help="run folder of the real-model quickstart")

    tok = sub.add_parser("tokenizer", help="Tokenizer tools.").add_subparsers(dest="sub", metavar="SUB")
    p = add("train", cmd_tokenizer_train, "Train a byte-level BPE tokenizer on text files.", tok)
    p.add_argument("inputs", nargs="*", help="files or folders (.txt, .md, .jsonl); else data.inputs")
    p.add_argument("--out", required=True, help="tokenizer.json path or folder")

    data = sub.add_parser("data", help="Data tools.").add_subparsers(dest="sub", metavar="SUB")
    p = add("prepare", cmd_data_prepare, "Tokenize text into train/validation token shards.", data)
    p.add_argument("inputs", nargs="*", help="files or folders (.txt, .md, .jsonl); else data.inputs")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--tokenizer", help="an existing tokenizer.json (default: train one)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    p = add("pipeline", cmd_data_pipeline, "Clean a corpus: normalise, language, quality, dedup, PII, domain "
            "tags (resumable; see recipes/pipeline_*.yaml).", data)
    p.add_argument("--out", help="output folder (default: out_dir of the recipe)")
    p.add_argument("--overwrite", action="store_true", help="start again in a folder made with another config")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = add("train", cmd_train, "Pretrain a model (single process or under torchrun).")
    p.add_argument("--resume", action="store_true", help="continue from <out_dir>/checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    for name, fn, help_text in (
            ("sft", cmd_sft, "Full fine-tuning on instruction data (the baseline LoRA adapters are compared with)."),):
        p = add(name, fn, help_text)
        _finetune_args(p)

    lora = sub.add_parser("lora", help="Domain adapters (LoRA): train, merge, list, eval.").add_subparsers(
        dest="sub", metavar="SUB")
    p = add("train", cmd_lora_train, "Train a LoRA adapter (routed experts included) on instruction data.", lora)
    _finetune_args(p)
    p = add("merge", cmd_lora_merge, "Fold an adapter into a new, plain checkpoint.", lora)
    p.add_argument("adapter", help="adapter folder (or its training run folder)")
    p.add_argument("--out", required=True, help="output checkpoint folder (new)")
    p.add_argument("--base", help="base checkpoint (default: the one the adapter records)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint at --out")
    p = add("list", cmd_lora_list, "List the adapters under a folder.", lora)
    p.add_argument("dir", nargs="?", default="runs/adapters", help="folder to search (default runs/adapters)")
    p = add("eval", cmd_lora_eval, "Domain and general perplexity with and without adapters.", lora)
    p.add_argument("adapters", nargs="+", help="adapter folders (all on one base)")
    p.add_argument("--base", help="base checkpoint (default: the one the first adapter records)")
    p.add_argument("--data", nargs="*", help="instruction files (default: each adapter's own training files)")
    p.add_argument("--text", nargs="*", metavar="[NAME=]PATH", help="general text corpora")
    p.add_argument("--split", default="val", choices=("val", "train", "all"), help="instruction split (default val)")
    p.add_argument("--seq-len", type=int, help="tokens per window / conversation (default: the model's context)")
    p.add_argument("--batch-size", type=int, default=16)

    p = add("eval", cmd_eval, "Validation loss, perplexity and routing statistics of a checkpoint.")
    p.add_argument("checkpoint", help=CHECKPOINT_HELP)
    p.add_argument("--data", nargs="*", metavar="[NAME=]PATH",
                   help="a text file/folder or a prepared shard folder (default: the run's own validation "
                        "split); several: each is a corpus of its own, and the routing report shows which "
                        "experts each uses, with a specialisation score")
    p.add_argument("--plot", metavar="PNG", help="with several --data corpora: write the expert-share heatmap")
    p.add_argument("--split", default="val", help="split of a shard folder (default: val)")
    p.add_argument("--routing", action="store_true", help="print the per-layer routing table")
    p.add_argument("--kl-ref", metavar="REF_CKPT", help="also the per-token KL divergence of the next-token "
                   "distributions from this (e.g. full-precision) checkpoint's: mean and p99")
    p.add_argument("--tasks", nargs="+", metavar="FILE.jsonl", help="multiple-choice task files "
                   "({question, choices, answer} per line): accuracy by log-likelihood, and length-normalised")
    p.add_argument("--limit", type=int, help="with --tasks: the first N items of each file")

    p = add("quant", cmd_quant, "Quantize a checkpoint (int8 / int4 weights, rtn or gptq) into a new checkpoint.")
    p.add_argument("checkpoint", help="full-precision checkpoint folder (or run folder)")
    p.add_argument("--out", required=True, help="output checkpoint folder (new)")
    p.add_argument("--bits", type=int, help="same as --quant.bits (4 or 8; the uniform policy)")
    p.add_argument("--group", type=int, help="same as --quant.group_size (32, 64 or 128; 4-bit weights)")
    p.add_argument("--method", help="same as --quant.method (rtn or gptq)")
    p.add_argument("--policy", help="same as --quant.policy (uniform; mixed: 8-bit router/attention/shared, "
                   "4-bit routed experts, dense FFNs, embedding; budget: 4 or 8 bits per matrix by sensitivity)")
    p.add_argument("--max-bits", type=float, help="same as --quant.max_bits (the budget policy's bits per weight)")
    p.add_argument("--kernel", help="same as --quant.kernel (auto, packed or dequant)")
    p.add_argument("--activations", type=int, metavar="8", help="same as --quant.activations: 8-bit inputs too for "
                   "the 8-bit attention and FFN layers (W8A8, integer products; smoothed on calibration text)")
    p.add_argument("--calib", nargs="+", metavar="PATH", help="calibration text for gptq and W8A8 smoothing (same as "
                   "--quant.calib.files)")
    p.add_argument("--tune-steps", type=int, metavar="N", help="same as --quant.tune_steps: after quantizing, N steps "
                   "of training the scales and offsets towards the source model's predictions (codes fixed)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint at --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = add("moefy", cmd_moefy, "Convert a dense checkpoint into a dynamic-routing MoE: experts cut from each FFN's "
            "neurons, routers fitted on calibration text. Given a converted MoE (healed or not), re-target its "
            "routing (--router, --target-k, --top-k) instead.")
    p.add_argument("checkpoint", help="dense full-precision checkpoint folder, run folder or fetched model name; or "
                   "a converted MoE to re-target")
    p.add_argument("--out", required=True, help="output checkpoint folder (new)")
    p.add_argument("--experts", type=int, help="same as --moefy.experts (routed experts per FFN)")
    p.add_argument("--shared", type=int, help="same as --moefy.shared_dim (neurons of the always-on shared expert)")
    p.add_argument("--split", help="same as --moefy.split (coactivation, weights or random)")
    p.add_argument("--router", help="same as --moefy.router (dynamic or topk)")
    p.add_argument("--target-k", type=float, help="same as --moefy.target_k (dynamic: average experts per token)")
    p.add_argument("--top-k", type=int, help="same as --moefy.top_k (topk: experts per token)")
    p.add_argument("--calib", nargs="+", metavar="PATH", help="calibration text (same as --moefy.calib.files; "
                   "default: the standard library's documentation)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint at --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = add("shrink", cmd_shrink, "Cut a dense checkpoint into a smaller student for distillation: keep some "
            "blocks, and/or each FFN's most important neurons (measured on calibration text).")
    p.add_argument("checkpoint", help=CHECKPOINT_HELP)
    p.add_argument("--out", required=True, help="output checkpoint folder (new)")
    p.add_argument("--layers", help="blocks to keep: every-other, influence:N (the N blocks that change the hidden "
                   "state most on the calibration text), or indices such as 0,2,4,-1")
    p.add_argument("--ffn-share", type=float, help="share of each FFN's neurons to keep (0-1], the most important")
    p.add_argument("--calib", nargs="+", metavar="PATH", help="calibration text for --ffn-share and "
                   "--layers influence:N (default: the standard library's documentation)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint at --out")

    p = add("generate", cmd_generate, "Generate text from a checkpoint (streams to the terminal).")
    p.add_argument("checkpoint", help=CHECKPOINT_HELP)
    p.add_argument("--prompt", required=True)
    p.add_argument("--chat", action="store_true", help="wrap the prompt as a user turn of the model's chat template")
    p.add_argument("--system", help="with --chat: a system message before the user turn")
    p.add_argument("--adapter", help="a LoRA adapter folder to apply (made for this checkpoint)")
    _generation_flags(p)

    from lightseek.models.commands import add_model_commands

    add_model_commands(add, _generation_flags)

    p = add("serve", cmd_serve, "Serve a checkpoint (and adapters) over an OpenAI-compatible HTTP API.")
    p.add_argument("checkpoint", help=CHECKPOINT_HELP)
    p.add_argument("--adapters", help="a folder of adapters made for this checkpoint (model names BASE:ADAPTER)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--name", help="the base model's id (default: the run folder's name)")
    p.add_argument("--max-slots", type=int, help="sequences decoded together (default 16, or as many as "
                                                 "--kv-cache-gb holds)")
    p.add_argument("--kv-cache-gb", type=float, help="memory for the KV cache (GiB): the number of sequences "
                                                     "served together is what fits at --max-len tokens each")
    p.add_argument("--max-len", type=int, help="longest sequence (prompt + reply) in tokens (default: the "
                                               "model's context length)")
    p.add_argument("--max-waiting", type=int, default=64,
                   help="queued sequences before 429 (a completions request queues one per prompt and choice)")
    p.add_argument("--prefill-chunk", type=int, default=64, help="prompt tokens per prefill step")
    p.add_argument("--threads", type=int, default=0, help="PyTorch CPU threads (default: one core fewer than the machine has)")
    p.add_argument("--usage-log", help="append one JSON line per ended request (token counts, finish reason)")
    p.add_argument("--platform", metavar="DB_URL", help="API keys, rate limits, budgets and the usage ledger in this "
                   "database (a SQLite file path, or postgresql://... for several server processes); "
                   "manage it with `lightseek admin --db DB_URL`")
    p.add_argument("--protect-metrics", action="store_true", help="with --platform: /metrics needs an admin key")
    p.add_argument("--safety", metavar="FOLDER", help="moderate prompts and outputs with the classifiers `lightseek "
                   "safety train` wrote there; serves /v1/moderations")
    p.add_argument("--safety-policy", metavar="YAML", help="thresholds and actions per category (docs/safety.md)")
    p.add_argument("--safety-policies", metavar="DIR", help="named policies (NAME.yaml) that API keys may be given "
                   "(`lightseek admin key-create --safety-policy NAME`)")
    p.add_argument("--safety-rules", metavar="YAML", help="term lists and patterns (default: the package's own)")
    p.add_argument("--safety-audit", metavar="FILE", help="append one JSON line per moderation decision")

    from lightseek.label.commands import add_label_commands
    from lightseek.platform.commands import add_admin_commands
    from lightseek.safety.commands import add_safety_commands

    add_admin_commands(sub, add)
    add_safety_commands(sub, add)
    add_label_commands(sub, add)

    dist = sub.add_parser("distill", help="Distillation: the DataDistiller and knowledge distillation.").add_subparsers(
        dest="sub", metavar="SUB")
    p = add("data", cmd_distill_data, "Inputs -> domain -> the domain's expert writes -> the base refines or judges "
            "-> an instruction dataset (resumable, seeded). Config keys are flags too: --out=DIR, --mode=judge, "
            "--experts.medical=CKPT (`lightseek config --for distiller` lists them).", dist)
    p.add_argument("inputs", nargs="*", help="input files or folders (else `inputs` of the config)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p = add("train", cmd_distill_train, "Train a student from per-domain teachers (forward/reverse KL, temperature, "
            "next-token ratio). Config keys are flags too: --student=CKPT, --teachers.medical=SPEC, "
            "--data.sources=[medical=PATH] (`lightseek config --for distill` lists them).", dist)
    p.add_argument("--resume", action="store_true", help="continue from <out_dir>/checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = add("info", cmd_info, "Parameters (total, active per token), FLOPs per token, routing config.")
    p.add_argument("checkpoint", nargs="?", help="checkpoint folder; default: the configured model")

    _domains_parser(sub, add)

    p = add("config", cmd_config, "List every config key with its default and help (or --show the resolved config).")
    p.add_argument("--show", action="store_true", help="print the resolved config as YAML")
    p.add_argument("--for", dest="kind", default="train", choices=list(_config_kinds()),
                   help="whose config: train (default), finetune (lora train / sft), distill (distill train), "
                        "distiller (distill data), pipeline (data pipeline), quant, moefy")
    p.add_argument("--finetune", action="store_true", help="same as --for finetune")
    return parser


def _domains_parser(sub, add: Callable) -> None:
    """`lightseek domains build|train|eval|classify`: the domain classifier."""
    dom = sub.add_parser("domains", help="Domain classifier: build data, train, eval, classify.").add_subparsers(
        dest="sub", metavar="SUB")
    p = add("build", cmd_domains, "Build labelled domain data (train, held-out, questions) from ../shared/data.", dom)
    p.add_argument("--out", required=True, help="output folder (replaced whole)")
    p.add_argument("--shared", help="folder of the shared corpora (default ../shared/data)")
    p = add("train", cmd_domains, "Train a domain classifier on labelled JSONL ({text, domain}).", dom)
    p.add_argument("--data", required=True, help="a folder made by `domains build`, or labelled files/folder")
    p.add_argument("--out", required=True, help="classifier folder to write (replaced whole)")
    p.add_argument("--eval", nargs="*", help="labelled files to report on (default: the build folder's held-out sets)")
    p.add_argument("--encoder", help="local Hugging Face encoder folder: embeddings instead of TF-IDF")
    p.add_argument("--model", help="lightseek checkpoint or fetched model's name: its hidden states as features "
                                   "(beside TF-IDF; see --domains.model_layer, --domains.model_tfidf)")
    p.add_argument("--zero-shot", help="an instruct model (checkpoint or fetched name) asked for each text's domain; "
                                       "the data only gives the label set")
    train = p
    p = add("eval", cmd_domains, "Per-domain P/R/F1, macro-F1, confusion matrix.", dom)
    p.add_argument("model", help="classifier folder")
    p.add_argument("--data", required=True, help="labelled file (.jsonl, .json, .csv) or folder")
    p.add_argument("--plot", metavar="PNG", help="write the confusion matrix as a PNG")
    p.add_argument("--json", metavar="FILE", help="write the metrics as JSON")
    c = add("classify", cmd_domains, "Add domain and confidence to JSONL records or text lines.", dom)
    c.add_argument("model", help="classifier folder")
    c.add_argument("input", help="a .jsonl file, a text file (one text per line), or - for stdin")
    c.add_argument("--out", help="output JSONL (default: stdout)")
    for q in (train, p, c):
        q.add_argument("--threshold", type=float, help="below this confidence a text is `general`")
        q.add_argument("--text-field", help="record field of the text (default: the classifier's)")
    for q in (train, p):
        q.add_argument("--label-field", help="record field of the domain label (default: the classifier's)")
    c.add_argument("--format", default="auto", choices=("auto", "jsonl", "text"), help="input format")


CHECKPOINT_HELP = "checkpoint folder, run folder, or a fetched model's name (`lightseek models`)"


def _generation_flags(p: argparse.ArgumentParser) -> None:
    for flag, key, typ in (("--max-new-tokens", "max_new_tokens", int), ("--temperature", "temperature", float),
                           ("--top-k", "top_k", int), ("--top-p", "top_p", float), ("--seed", "seed", int)):
        p.add_argument(flag, dest=f"gen_{key}", type=typ, help=f"same as --generate.{key}")
    p.add_argument("--stop", dest="gen_stop", action="append",
                   help="stop string (repeatable; \\n and \\t mean newline and tab)")


def _finetune_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base", help="base checkpoint (checkpoint or run folder)")
    p.add_argument("--data", nargs="+", help="instruction files or folders (.jsonl, .json, .csv)")
    p.add_argument("--name", help="adapter / model name (default folder runs/adapters/NAME or runs/sft/NAME)")
    p.add_argument("--resume", action="store_true", help="continue the run in its folder")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _flag_overrides(args: argparse.Namespace) -> list[str]:
    """--temperature 0.5 etc. become --generate.temperature=0.5."""
    import json

    out = []
    for key, value in vars(args).items():
        if key == "gen_stop" and value:  # a shell cannot easily pass a newline: read \n and \t
            value = [v.replace("\\n", "\n").replace("\\t", "\t") for v in value]
        if key.startswith("gen_") and value is not None:
            out.append(f"--generate.{key[4:]}={json.dumps(value, ensure_ascii=False)}")
    return out


TOP_LEVEL_KEYS = {"preset", "out_dir"}
# commands whose config has more top-level keys than a training run's (``--mode=judge``)
COMMAND_CONFIGS = {("distill", "train"): "distill", ("distill", "data"): "distiller"}


def _top_level_keys(argv: list[str]) -> set[str]:
    """The undotted keys that are config overrides for the command in ``argv``: a training run's
    (preset, out_dir), or every field of the command's own config that is not a section."""
    import dataclasses
    import importlib
    import typing

    kind = COMMAND_CONFIGS.get(tuple(a for a in argv[:2] if not a.startswith("-")))
    if kind is None:
        return TOP_LEVEL_KEYS
    module, _, name = _config_kinds()[kind][0].partition(":")
    hints = typing.get_type_hints(getattr(importlib.import_module(module), name))
    return TOP_LEVEL_KEYS | {key for key, tp in hints.items() if not dataclasses.is_dataclass(tp)}


def split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """Separate run-config overrides (``--section.key[=value]``, ``--preset``, ``--out_dir``)
    from the subcommand's own arguments, so argparse never mistakes an override's value for a
    positional argument."""
    own, overrides = [], []
    top = _top_level_keys(argv)
    i = 0
    while i < len(argv):
        arg = argv[i]
        key = arg[2:].split("=", 1)[0].replace("-", "_") if arg.startswith("--") else ""
        if key and ("." in key or key in top):
            overrides.append(arg)
            if "=" not in arg and i + 1 < len(argv):
                overrides.append(argv[i + 1])
                i += 1
        else:
            own.append(arg)
        i += 1
    return own, overrides


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    own, rest = split_overrides(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(own)
    if not getattr(args, "fn", None):
        parser.print_help()
        return 0 if args.command is None else 2
    name = " ".join(filter(None, (args.command, getattr(args, "sub", None))))  # "data prepare"
    try:
        return args.fn(args, rest + _flag_overrides(args))
    except LightseekError as e:
        print(f"lightseek {name}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"lightseek {name}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stdout = open(os.devnull, "w")
        return 0
    except OSError as e:  # the system refused a file (a folder that cannot be written, a full disk)
        where = f"{e.filename}: " if e.filename else ""
        print(f"lightseek {name}: error: {where}{e.strerror or e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

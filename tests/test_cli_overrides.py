"""How the CLI turns flags into run-config overrides."""

from __future__ import annotations

from lightseek.cli import _flag_overrides, build_parser, split_overrides
from lightseek.train.config import load_run_config


def test_override_values_are_never_taken_as_positionals():
    own, overrides = split_overrides(["info", "--preset", "small", "--train.lr", "3e-4", "ckpt"])
    assert own == ["info", "ckpt"]
    cfg = load_run_config(None, overrides)
    assert cfg.preset == "small" and cfg.train.lr == 3e-4 and cfg.model.dim == 512


def test_generate_flags_become_the_generate_section_with_escapes_read():
    args = build_parser().parse_args(["generate", "ckpt", "--prompt", "p", "--temperature", "0",
                                      "--stop", "\\n\\n", "--stop", "END", "--seed", "3"])
    cfg = load_run_config(None, _flag_overrides(args))
    assert cfg.generate.stop == ["\n\n", "END"]
    assert cfg.generate.temperature == 0.0 and cfg.generate.seed == 3


def test_a_commands_own_top_level_keys_are_overrides_only_for_it():
    own, overrides = split_overrides(["distill", "data", "in.jsonl", "--mode=judge", "--seed", "3", "--kd"])
    assert own == ["distill", "data", "in.jsonl", "--kd"] and overrides == ["--mode=judge", "--seed", "3"]
    own, overrides = split_overrides(["distill", "train", "--student=S", "--kd.temperature=2", "--resume"])
    assert own == ["distill", "train", "--resume"] and overrides == ["--student=S", "--kd.temperature=2"]
    own, overrides = split_overrides(["generate", "ckpt", "--prompt", "x", "--seed", "3"])
    assert own == ["generate", "ckpt", "--prompt", "x", "--seed", "3"] and overrides == []


def test_a_text_key_takes_a_number_like_or_yes_like_value_as_written():
    import yaml

    from lightseek.config import to_dict

    cfg = load_run_config(None, ["--out_dir=2024", "--data.text_field=1.50", "--train.lr=3e-4", "--train.steps=12",
                                 "--train.plots=yes", "--model.target_k=2"])
    assert cfg.out_dir == "2024" and cfg.data.text_field == "1.50"
    assert cfg.train.lr == 3e-4 and cfg.train.steps == 12 and cfg.train.plots is True
    assert type(cfg.train.steps) is int and type(cfg.model.target_k) is float  # plain values, not the text-keeping ones
    assert yaml.safe_load(yaml.safe_dump(to_dict(cfg)))["out_dir"] == "2024"  # config.yaml round-trips
    assert load_run_config(None, ["--out_dir=yes"]).out_dir == "yes"


def test_a_number_for_a_number_key_is_still_checked():
    import pytest

    from lightseek.errors import ConfigError

    with pytest.raises(ConfigError, match="'train.steps': expected an integer, got 'many'"):
        load_run_config(None, ["--train.steps=many"])
    with pytest.raises(ConfigError, match="'train.steps': expected an integer, got True"):
        load_run_config(None, ["--train.steps=yes"])

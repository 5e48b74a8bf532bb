"""Calibration windows: every source named is calibrated on, in equal shares."""

from __future__ import annotations

import pytest
import torch

from lightseek.data.calib import CalibConfig, calibration_windows
from lightseek.errors import ConfigError


class Bytes:
    """A tokenizer of one token per byte (what calibration_windows needs: encode, eot_id)."""

    eot_id = 0

    def encode(self, text: str) -> list[int]:
        return list(text.encode())


def test_every_file_gets_an_equal_share_of_the_windows(tmp_path) -> None:
    long, short = tmp_path / "long.txt", tmp_path / "short.jsonl"
    long.write_text("a" * 100_000)                                    # far more than all windows need
    short.write_text("\n".join('{"text": "%s"}' % ("b" * 500) for _ in range(40)))
    cfg = CalibConfig(files=[str(long), str(short)], samples=16, seq_len=64)
    windows = torch.cat(calibration_windows(Bytes(), cfg, max_seq_len=1024, batch_size=4))
    assert windows.shape == (16, 64)
    share_b = (windows == ord("b")).float().mean().item()
    assert 0.4 < share_b < 0.6, share_b                                # half from each, not all from the first
    assert set(windows.unique().tolist()) <= {0, ord("a"), ord("b")}


def test_no_calibration_text_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="calibration text is needed"):
        calibration_windows(Bytes(), CalibConfig(), max_seq_len=64)

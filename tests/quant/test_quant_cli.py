"""`lightseek quant`, then `generate` and `eval --kl-ref` on its output, end to end."""

from __future__ import annotations

import json

from conftest import corpus_text

from lightseek.cli import main


def test_quant_cli_end_to_end(debug_checkpoint, tmp_path, capsys) -> None:
    text = tmp_path / "calib.txt"
    text.write_text(corpus_text()[:20_000], encoding="utf-8")
    out = tmp_path / "q4"
    rc = main(["quant", str(debug_checkpoint), "--bits", "4", "--group", "32", "--method", "gptq", "--calib",
               str(text), "--out", str(out), "--quant.calib.samples=4", "--quant.calib.seq_len=32", "--quiet"])
    printed = capsys.readouterr().out
    assert rc == 0 and "bits/weight" in printed and "smaller" in printed
    meta = json.loads((out / "config.json").read_text())
    q = meta["quantization"]
    assert q["config"]["method"] == "gptq" and q["config"]["calib"]["samples"] == 4
    assert q["source"]["sha256"] and q["bits_per_weight"] < 6
    assert (out / "tokenizer.json").is_file()

    assert main(["generate", str(out), "--prompt", "The king", "--max-new-tokens", "5", "--temperature", "0"]) == 0
    assert capsys.readouterr().out.startswith("The king")

    assert main(["eval", str(out), "--data", str(text), "--kl-ref", str(debug_checkpoint),
                 "--train.eval_batches=1"]) == 0
    line = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("KL(ref || model)")]
    assert line and "p99" in line[0]

    # a bad configuration: one line naming the value, exit status 2, nothing written
    bad = tmp_path / "bad"
    assert main(["quant", str(debug_checkpoint), "--bits", "3", "--out", str(bad)]) == 2
    assert "quant.bits: 3" in capsys.readouterr().err and not bad.exists()
    assert main(["quant", str(debug_checkpoint), "--policy", "mixed", "--group", "64", "--out", str(bad)]) == 2
    assert "does not divide" in capsys.readouterr().err and not bad.exists()
    # an existing output is not replaced without --overwrite; a quantized checkpoint is not quantized again
    assert main(["quant", str(debug_checkpoint), "--bits", "8", "--out", str(out)]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["quant", str(out), "--bits", "8", "--out", str(tmp_path / "again")]) == 2
    assert "already quantized" in capsys.readouterr().err

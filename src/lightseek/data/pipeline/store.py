"""The output folder: atomic file writes, the manifest, shard file names, the saved dedup
state, and refusing a folder made with another config.

Layout: ``kept/shard-NNNNN.jsonl`` (kept records with provenance), ``excluded/shard-NNNNN.jsonl``
(removed records with step and reason), ``state/shard-NNNNN.npz`` (what dedup learned from the
shard), ``manifest.json`` (config, config hash, one entry per completed shard) and
``stats.json`` / ``stats.md``. A shard counts as done only once the manifest lists it, and the
manifest is written last, so a run killed at any moment redoes at most the shard in flight.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np

from lightseek.errors import ConfigError, DataError
from lightseek.fileio import write_bytes_atomic

MANIFEST = "manifest.json"
OUR_NAMES = ("kept", "excluded", "state", MANIFEST, "stats.json", "stats.md")


def jsonl_bytes(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")


def shard_name(shard: int) -> str:
    return f"shard-{shard:05d}"


def save_state(path: Path, state: dict[str, np.ndarray]) -> None:
    buf = io.BytesIO()
    np.savez(buf, **state)
    write_bytes_atomic(path, buf.getvalue())


def load_state(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read the saved dedup state ({e}); rerun with --overwrite") from None


def open_out_dir(out: Path, config_hash: str, overwrite: bool) -> dict:
    """The manifest to continue from (empty for a fresh start). A folder made with another
    config, or holding other files, is refused unless ``overwrite`` (which removes only the
    pipeline's own files)."""
    manifest_path = out / MANIFEST
    if overwrite:
        for name in OUR_NAMES:
            p = out / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    if manifest_path.is_file():
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise DataError(f"{manifest_path}: unreadable manifest ({e}); rerun with --overwrite") from None
        old = manifest.get("config_hash", "")
        if old != config_hash:
            raise ConfigError(f"{out}: made with a different config or input (config hash {old[:12]} != "
                              f"{config_hash[:12]}); pass --overwrite to start again, or choose another --out")
        return manifest
    if not overwrite and out.is_dir() and any(out.iterdir()):
        raise ConfigError(f"{out}: folder exists and is not a pipeline output; pass --overwrite or choose another --out")
    return {}

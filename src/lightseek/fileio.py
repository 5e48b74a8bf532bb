"""Atomic file writes, the one recipe for every file lightseek writes: write to a temp file in
the same folder, fsync, rename over the target. A reader (or a killed run) sees the old file or
the new one, never half of one. Folders (checkpoints, adapters, classifiers) are swapped whole by
`write_dir_atomic`, and `recover_dir` puts back a folder whose swap was killed half-way.
Torch-free, so the data tools can use it without the model."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from lightseek.errors import CheckpointError, LightseekError


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """``with atomic_open(path) as f: f.write(...)``: ``path`` appears, complete, when the block
    ends without an error; on an error nothing at ``path`` changes. Modes "w" (UTF-8) or "wb"."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open: mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes files private; these are ordinary output files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path) as f:
        f.write(text)


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    """``obj`` as indented UTF-8 JSON with a final newline."""
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


# --- folders ----------------------------------------------------------------------------------
# A folder swap goes through three sibling names: `.NAME.tmp-X` while it is written (possibly
# incomplete), `.NAME.new-X` once it is complete and fsynced, `.NAME.old-X` for the folder it
# replaces while the two are swapped.
_STAGES = ("tmp", "new", "old")


def _stage(path: Path, stage: str, suffix: str) -> Path:
    return path.with_name(f".{path.name}.{stage}-{suffix}")


def _leftovers(path: Path, stage: str) -> list[Path]:
    """Sibling folders a swap of ``path`` left in ``stage``, newest first."""
    found = [p for p in path.parent.glob(f".{path.name}.{stage}-*") if p.is_dir()]
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_dir_atomic(path: str | os.PathLike, fill: Callable[[Path], None]) -> Path:
    """Create folder ``path`` atomically; an existing folder at ``path`` is replaced whole.

    ``fill`` writes into `.NAME.tmp-X` beside it; its files are fsynced and it is renamed to
    `.NAME.new-X` (complete). The current folder moves to `.NAME.old-X`, the new one takes its
    name, the old one is removed. Killed at any moment, this leaves a complete folder at ``path``,
    or (killed between the two renames) in `.NAME.new-X`, which `recover_dir` puts back."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        recover_dir(path)
        for stage in _STAGES:  # what earlier killed swaps left: ``path`` is the complete copy now
            for p in _leftovers(path, stage):
                shutil.rmtree(p, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
    except OSError as e:
        raise LightseekError(f"cannot write {path} ({e.strerror or e})") from None
    suffix = tmp.name.rsplit("-", 1)[1]
    new, old = _stage(path, "new", suffix), _stage(path, "old", suffix)
    try:
        fill(tmp)
        for f in sorted(tmp.rglob("*")):
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        fsync_dir(tmp)
        os.replace(tmp, new)
        fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    moved = False
    try:
        if path.exists():
            os.replace(path, old)
            moved = True
        os.replace(new, path)
        fsync_dir(path.parent)
    except Exception:
        if moved and not path.exists():  # an error (not a kill) between the renames: undo
            os.replace(old, path)
        shutil.rmtree(new, ignore_errors=True)
        raise
    if moved:
        shutil.rmtree(old, ignore_errors=True)
    return path


def recover_dir(path: str | os.PathLike) -> Path | None:
    """Put back folder ``path`` when a `write_dir_atomic` swap was killed between its two renames:
    the complete new copy (`.NAME.new-X`), else the complete previous one (`.NAME.old-X`). Returns
    the folder it was restored from, or None when ``path`` exists or nothing complete is left.
    A `.NAME.tmp-X` is never trusted: it may have been killed while written."""
    path = Path(path)
    if path.exists() or not path.parent.is_dir():
        return None
    for stage in ("new", "old"):
        for src in _leftovers(path, stage):
            os.replace(src, path)
            fsync_dir(path.parent)
            print(f"lightseek: {path} was missing after an interrupted save; restored the complete copy "
                  f"from {src.name}", file=sys.stderr)
            return src
    return None


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def resolve_folder(path: str | os.PathLike, kind: str, sub: str, required: tuple[str, ...], hint: str = "") -> Path:
    """Folder ``path`` holding ``required`` files, or its ``sub/`` folder when that is where they
    are (a run folder). A folder an interrupted save left aside is restored first (`recover_dir`).
    A CheckpointError names the kind and the first file missing."""
    path = Path(path)
    recover_dir(path)
    if path.is_dir():
        recover_dir(path / sub)
    if not path.exists():
        partial = _leftovers(path, "tmp")
        raise CheckpointError(f"{kind} not found: {path}" + (
            f" (an interrupted save left {partial[0]}, which may be incomplete; if it is complete, rename "
            f"it to {path.name})" if partial else ""))
    if not (path / required[0]).exists() and (path / sub / required[0]).exists():
        path = path / sub
    for name in required:
        if not (path / name).is_file():
            raise CheckpointError(f"{kind} {path}: missing {name}{hint}")
    return path


def check_new_checkpoint_dir(out: str | os.PathLike, src: str | os.PathLike, overwrite: bool,
                             marker: str = "config.json") -> None:
    """Refuse an output folder that overlaps the source checkpoint, or that exists (unless it is
    a checkpoint, marked by ``marker``, and ``overwrite`` is set)."""
    out, keep = Path(out).resolve(), Path(src).resolve()
    if out == keep or out in keep.parents or keep in out.parents:
        raise LightseekError(f"--out {out} overlaps the source checkpoint {src}: choose a new folder")
    is_checkpoint = (out / marker).is_file()
    if out.exists() and not (overwrite and is_checkpoint):
        raise LightseekError(f"--out {out} exists{'' if is_checkpoint else ' and is not a checkpoint'}; choose a new "
                             f"folder{' (or pass --overwrite to replace that checkpoint)' if is_checkpoint else ''}")
    try:  # a folder that cannot be written fails now, not after the work that fills it
        out.parent.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.probe-").cleanup()
    except OSError as e:
        raise LightseekError(f"--out {out}: cannot write there ({e.strerror or e})") from None

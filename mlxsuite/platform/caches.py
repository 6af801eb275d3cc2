"""What mlxsuite keeps outside the model store: the folders and files under `cache_dir()` (~/.cache/mlxsuite, or
$XDG_CACHE_HOME/mlxsuite), their sizes, and clearing them. Everything here is rebuilt when needed."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from mlxsuite.platform import cache_dir
from mlxsuite.platform.errors import UserError


@dataclass(frozen=True)
class Cache:
    name: str
    patterns: tuple[str, ...]  # entries of cache_dir() that belong to it (glob patterns)
    what: str
    bound: str


CACHES = (
    Cache(
        "gguf",
        ("gguf",),
        "model folders converted from .gguf files opened by path (one per file and dtype)",
        "about the size of each GGUF file opened, per dtype; not pruned",
    ),
    Cache(
        "tokens",
        ("tokens",),
        "token streams of corpora, per tokenizer and split",
        "1 GiB; the least recently used go first",
    ),
    Cache(
        "smollm2",
        ("smollm2",),
        "SmolLM2-135M-Instruct's GGUF, fetched by scripts/get-smollm2.sh",
        "one file, ~94 MB",
    ),
    Cache(
        "blas",
        ("libmlxsuite_openblas_*.so", "libmlxsuite_attention_*.so", "blas-*.json"),
        "the C libraries compiled on first use (BLAS forwarding, fused CPU attention) and the BLAS self-test verdicts",
        "a few files, under 100 KB",
    ),
)


def _size(path: Path) -> tuple[int, int]:
    """(bytes, files) of a file or a folder (symbolic links are not followed)."""
    if path.is_symlink() or path.is_file():
        return path.lstat().st_size, 1
    total = files = 0
    for p in path.rglob("*"):
        if p.is_symlink() or p.is_file():
            total, files = total + p.lstat().st_size, files + 1
    return total, files


def _entries(cache: Cache) -> list[Path]:
    root = cache_dir()
    return sorted(p for pattern in cache.patterns for p in root.glob(pattern))


def listing() -> list[dict]:
    """One row per cache (known ones, then any other entry of the cache folder): name, path, bytes, files, what,
    bound."""
    rows, known = [], set()
    for cache in CACHES:
        entries = _entries(cache)
        known.update(entries)
        sizes = [_size(p) for p in entries]
        rows.append(
            {
                "name": cache.name,
                "path": str(cache_dir() / cache.patterns[0]) if len(cache.patterns) == 1 else str(cache_dir()),
                "bytes": sum(b for b, _ in sizes),
                "files": sum(f for _, f in sizes),
                "what": cache.what,
                "bound": cache.bound,
            }
        )
    root = cache_dir()
    for p in sorted(root.iterdir()) if root.is_dir() else []:
        if p not in known:
            size, files = _size(p)
            rows.append({"name": p.name, "path": str(p), "bytes": size, "files": files, "what": "", "bound": ""})
    return rows


def clear(names: list[str]) -> dict[str, int]:
    """Remove the named caches (names from `listing`); returns the bytes freed per name. Unknown names are refused
    before anything is removed."""
    rows = {r["name"]: r for r in listing()}
    unknown = [n for n in names if n not in rows]
    if unknown:
        raise UserError(f"no such cache: {', '.join(unknown)} (caches: {', '.join(rows)})")
    freed = {}
    for name in dict.fromkeys(names):
        cache = next((c for c in CACHES if c.name == name), None)
        entries = _entries(cache) if cache else [cache_dir() / name]
        for p in entries:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink(missing_ok=True)
        freed[name] = rows[name]["bytes"]
    return freed

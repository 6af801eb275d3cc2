"""The one way anything here is written: to a temporary sibling, then renamed into place.

An interrupted write (crash, SIGKILL, full disk) therefore never leaves a half file or folder under the final name,
only a hidden temporary named `.NAME.tmp-PID-RANDOM[.suffix]`. Those of processes that no longer run are removed
the next time anything is written into the same folder (`clean_stale`), so no later run trips over them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from mlxsuite.platform.errors import UserError

_TEMP = re.compile(r"^\..+\.(?:tmp|old)-(\d+)-[0-9a-f]{8}(?:\.\w+)?$")


def temp_path(path: Path, kind: str = "tmp", keep_suffix: bool = True) -> Path:
    """A hidden sibling of `path`; a file's keeps its suffix (mx.save_safetensors appends one if missing)."""
    path = Path(path)
    stem, suffix = (path.stem, path.suffix) if keep_suffix else (path.name, "")
    return path.with_name(f".{stem}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale(folder: Path) -> list[Path]:
    """Remove the temporaries that processes no longer running left in `folder`; returns what was removed."""
    removed = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for entry in entries:
        m = _TEMP.match(entry.name)
        if m and not _alive(int(m.group(1))):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def write_file(path: Path, write: Callable[[Path], None]) -> Path:
    """`write(tmp)` writes the content to a temporary path, which then replaces `path` (same folder, one rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(path.parent)
    tmp = temp_path(path)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text(path: Path, text: str) -> Path:
    return write_file(path, lambda tmp: tmp.write_text(text))


def copy_file(src: Path, path: Path) -> Path:
    return write_file(path, lambda tmp: shutil.copyfile(src, tmp))


def write_json(path: Path, obj) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_safetensors(path: Path, arrays: dict, metadata: dict | None = None) -> Path:
    import mlx.core as mx

    return write_file(path, lambda tmp: mx.save_safetensors(str(tmp), arrays, metadata=metadata or {}))


@contextmanager
def folder(path: Path, force: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder next to `path`; when the block ends without error it replaces `path` (an
    existing one only with `force`), on error it is removed."""
    path = Path(path)
    if path.exists() and not force:
        raise UserError(f"{path} exists: choose another name or pass `force`")
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(path.parent)
    tmp = temp_path(path, keep_suffix=False)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_folder(tmp, path)


def replace_folder(tmp: Path, path: Path) -> None:
    """Move the finished folder `tmp` to `path`, replacing an existing one (moved aside first, then deleted)."""
    if path.exists():
        old = temp_path(path, "old", keep_suffix=False)
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)

"""Hugging Face repo ids and cache folders → local checkpoint folders, through `huggingface_hub`.

`resolve_repo("org/name")` (or `org/name@revision`, or a cache folder `…/models--org--name`) returns the snapshot
folder of that repository: from the local cache when it holds a complete checkpoint (config.json and its safetensors
weights), else downloaded — unless HF_HUB_OFFLINE is set, which makes it one clear error. A download fetches
`config.json` first and refuses an unsupported `model_type` before any weight moves; it then fetches only what
mlx-lm's loader fetches, with safetensors as the only weights. The cache is where huggingface_hub keeps it:
HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub (read at each call).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Optional

from mlxsuite.models import supported
from mlxsuite.models.lm import FAMILIES
from mlxsuite.platform.errors import UserError

# mlx_lm.utils.DEFAULT_ALLOW_PATTERNS without code and pickles: config, tokenizer, chat template, safetensors weights
ALLOW_PATTERNS = [
    "*.json", "model*.safetensors", "tokenizer.model", "*.tiktoken", "tiktoken.model", "*.txt", "*.jsonl", "*.jinja",
]  # fmt: skip
# huggingface_hub's repo id rules: letters, digits, '-', '_', '.'; no leading '.' or '-'; one slash
_REPO_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.\-]{0,95}/[A-Za-z0-9][\w.\-]{0,95})(?:@(?P<rev>[\w.\-/]+))?$")
_TRUE = {"1", "on", "yes", "true"}


def cache_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def parse_repo_id(ref: str) -> Optional[tuple[str, Optional[str]]]:
    """(repo id, revision or None) when `ref` reads as a Hugging Face repo id and is not an existing path."""
    if Path(ref).expanduser().exists() or ref.endswith("/"):
        return None
    m = _REPO_ID.match(ref)
    if m is None or ".." in ref or m.group("repo").endswith((".", "-")):
        return None
    return m.group("repo"), m.group("rev")


def resolve_repo(ref: str, download: bool = True) -> Optional[Path]:
    """The local folder for a Hugging Face repo id or cache folder; None when `ref` is neither (an existing path, a
    store name without a slash). UserError when it cannot be had (offline and not cached, no such repo, an
    unsupported model_type, no safetensors weights)."""
    folder = Path(ref).expanduser()
    if folder.is_dir() and folder.name.startswith("models--"):
        return _cache_folder_snapshot(folder)
    parsed = parse_repo_id(ref)
    if parsed is None:
        return None
    repo, revision = parsed
    cached = cached_snapshot(repo, revision)
    if cached is not None:
        return cached
    where = f"{repo}{'@' + revision if revision else ''}"
    if offline():
        raise UserError(f"{where} is not in the Hugging Face cache ({cache_dir()}) and HF_HUB_OFFLINE is set")
    if not download:
        raise UserError(f"{where} is not in the Hugging Face cache ({cache_dir()})")
    return _download(repo, revision)


def cached_snapshot(repo: str, revision: Optional[str] = None) -> Optional[Path]:
    """The cached snapshot folder of `repo` at `revision` (default main) if it holds config.json and every
    safetensors weight file its index names (or at least one `model*.safetensors`); else None."""
    from huggingface_hub import try_to_load_from_cache

    config = try_to_load_from_cache(repo, "config.json", cache_dir=str(cache_dir()), revision=revision)
    if not isinstance(config, str):  # None (not cached) or the "known not to exist" sentinel
        return None
    snapshot = Path(config).parent
    return snapshot if _has_weights(snapshot) else None


def _has_weights(snapshot: Path) -> bool:
    index = snapshot / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (ValueError, KeyError, TypeError, AttributeError):
            return False
        return bool(shards) and all((snapshot / s).is_file() for s in shards)
    return any(snapshot.glob("model*.safetensors"))


def _cache_folder_snapshot(folder: Path) -> Path:
    """The snapshot `refs/main` points to in a cache folder `models--org--name` (else its only snapshot)."""
    snapshots = folder / "snapshots"
    ref = folder / "refs" / "main"
    if ref.is_file():
        snapshot = snapshots / ref.read_text().strip()
        if snapshot.is_dir():
            return snapshot
    found = sorted(p for p in snapshots.iterdir() if p.is_dir()) if snapshots.is_dir() else []
    if len(found) == 1:
        return found[0]
    what = "no snapshot" if not found else f"{len(found)} snapshots and no refs/main"
    raise UserError(f"{folder} is a Hugging Face cache folder with {what}: give the snapshot folder")


CONNECT_TIMEOUT = 3.0  # seconds per attempt to open a connection to the Hub (two attempts)
_PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def endpoint() -> str:
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def check_reachable(where: str) -> None:
    """One line within seconds when the Hub cannot be reached (huggingface_hub itself retries for ~30 s, logging each
    retry): a TCP connection to the endpoint, a short timeout, one retry. Skipped behind a proxy, which it cannot
    see through."""
    import socket
    import time
    from urllib.parse import urlsplit

    if any(os.environ.get(v) for v in _PROXY_VARIABLES):
        return
    url = urlsplit(endpoint())
    port = url.port or (443 if url.scheme == "https" else 80)
    for attempt in range(2):
        try:
            socket.create_connection((url.hostname, port), timeout=CONNECT_TIMEOUT).close()
            return
        except OSError as e:
            reason = str(e) or type(e).__name__
            if attempt == 0:
                time.sleep(0.5)
    raise UserError(
        f"{where} is not in the Hugging Face cache ({cache_dir()}) and the Hub ({url.geturl()}) cannot be reached "
        f"({reason}); to use only the cache, set HF_HUB_OFFLINE=1"
    )


def _download(repo: str, revision: Optional[str]) -> Path:
    import huggingface_hub
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"{repo}{'@' + revision if revision else ''}"
    check_reachable(where)
    try:
        config_file = huggingface_hub.hf_hub_download(
            repo, "config.json", revision=revision, cache_dir=str(cache_dir())
        )
        try:
            model_type = json.loads(Path(config_file).read_text()).get("model_type")
        except (ValueError, AttributeError):
            raise UserError(f"{where}: config.json is not valid JSON") from None
        if not supported(model_type):
            found = f"model_type {model_type!r}" if model_type else "no model_type"
            raise UserError(
                f"{where} has {found}; supported: {', '.join(FAMILIES)} and mlx-lm's architectures (nothing downloaded)"
            )
        snapshot = Path(
            huggingface_hub.snapshot_download(
                repo, revision=revision, cache_dir=str(cache_dir()), allow_patterns=ALLOW_PATTERNS
            )
        )
    except GatedRepoError:
        raise UserError(f"{where} is gated: accept its terms on the Hub and log in (hf auth login)") from None
    except RepositoryNotFoundError:
        raise UserError(f"{where}: no such Hugging Face repository (or it is private)") from None
    except RevisionNotFoundError:
        raise UserError(f"{where}: no such revision") from None
    except LocalEntryNotFoundError:  # a subclass of EntryNotFoundError: the Hub could not be reached
        raise UserError(
            f"{where} is not in the Hugging Face cache ({cache_dir()}) and the Hub cannot be reached; to use only "
            "the cache, set HF_HUB_OFFLINE=1"
        ) from None
    except EntryNotFoundError:
        raise UserError(f"{where} has no config.json: not a transformers checkpoint") from None
    except (HfHubHTTPError, OSError) as e:
        raise UserError(f"cannot download {where}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if not _has_weights(snapshot):
        raise UserError(f"{where} has no safetensors weights (model*.safetensors): only safetensors are read")
    return snapshot

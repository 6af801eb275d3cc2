"""Hugging Face repo ids and cache folders (`mlxsuite.store.hub`), without the network.

The cache is laid out as huggingface_hub lays it out (`hub/models--org--name/snapshots/<hash>/` with `refs/main`)
under a temporary HF_HOME; downloads are replaced by functions that record what would have been fetched.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_cli as run

from mlxsuite.platform.errors import UserError
from mlxsuite.store import hub

HASH = "0123456789abcdef0123456789abcdef01234567"


def fake_cache(home: Path, repo: str, config: dict, weights=True, revision_ref="main") -> Path:
    org, name = repo.split("/")
    root = home / "hub" / f"models--{org}--{name}"
    snapshot = root / "snapshots" / HASH
    snapshot.mkdir(parents=True)
    (root / "refs").mkdir()
    (root / "refs" / revision_ref).write_text(HASH)
    (snapshot / "config.json").write_text(json.dumps(config))
    if weights:
        (snapshot / "model.safetensors").write_bytes(b"")
    return snapshot


@pytest.fixture
def hf_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "hf"


def test_repo_id_resolves_from_the_cache_offline(hf_home, tmp_path, monkeypatch):
    snapshot = fake_cache(hf_home, "org/name", {"model_type": "llama"})
    assert hub.resolve_repo("org/name") == snapshot
    assert hub.resolve_repo(f"org/name@{HASH}") == snapshot
    assert hub.resolve_repo(str(hf_home / "hub" / "models--org--name")) == snapshot  # the cache folder itself
    # HF_HUB_CACHE wins over HF_HOME
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere"))
    with pytest.raises(UserError, match="not in the Hugging Face cache"):
        hub.resolve_repo("org/name")


def test_not_repo_ids(hf_home, tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    assert hub.resolve_repo("tiny") is None  # a store name
    assert hub.resolve_repo(str(tmp_path / "a" / "b")) is None  # an existing folder
    assert hub.resolve_repo("./x/y") is None and hub.resolve_repo("/x/y") is None and hub.resolve_repo("a/b/c") is None


def test_uncached_offline_is_one_line(hf_home, tmp_path, capsys):
    fake_cache(hf_home, "org/partial", {"model_type": "llama"}, weights=False)  # config only: not a checkpoint yet
    for repo in ("org/missing", "org/partial"):
        with pytest.raises(UserError, match=f"{repo} is not in the Hugging Face cache .* HF_HUB_OFFLINE"):
            hub.resolve_repo(repo)
    code, out, err = run(capsys, "convert", "from-hf", "org/missing", "m")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "HF_HUB_OFFLINE" in err
    assert not (tmp_path / "store" / "m").exists()


def test_unsupported_model_type_is_refused_before_weights(hf_home, tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(hub, "check_reachable", lambda where: None)  # the Hub is this test's fakes
    fetched = []

    def hf_hub_download(repo, filename, **kw):
        fetched.append(filename)
        path = tmp_path / "dl" / filename
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps({"model_type": "bert"}))  # an encoder: no mlx-lm class either
        return str(path)

    def snapshot_download(repo, **kw):
        fetched.append(("snapshot", tuple(kw.get("allow_patterns") or ())))
        return str(fake_cache(hf_home, repo, {"model_type": "llama"}))

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    with pytest.raises(UserError, match="model_type 'bert'.*nothing downloaded"):
        hub.resolve_repo("org/gpt")
    assert fetched == ["config.json"]
    # a supported one: the snapshot is fetched with safetensors as the only weights
    fetched.clear()
    monkeypatch.setattr(
        huggingface_hub,
        "hf_hub_download",
        lambda repo, f, **kw: str(fake_cache(hf_home, "org/llm", {"model_type": "qwen2"}) / f),
    )
    assert hub.resolve_repo("org/llm2").name == HASH
    patterns = fetched[0][1]
    assert "model*.safetensors" in patterns and not any(p.endswith((".bin", ".pt", ".py")) for p in patterns)


def test_from_hf_takes_a_cached_repo_id_offline(hf_home, tmp_path, capsys):
    import mlx.core as mx
    from test_convert import make_hf, mlx_lm_logits

    snapshot = hf_home / "hub" / "models--org--tiny" / "snapshots" / HASH
    make_hf(snapshot, "qwen2")
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text(HASH)
    code, _, err = run(capsys, "convert", "from-hf", "org/tiny", "tiny")
    assert code == 0, err
    assert mx.allclose(mlx_lm_logits(tmp_path / "store" / "tiny"), mlx_lm_logits(snapshot), rtol=1e-5, atol=1e-5)


def test_commands_take_a_cached_repo_id(hf_home, tmp_path, capsys):
    """`eval`/`generate` and the loader take a repo id: the cached snapshot (an mlx-lm/Hugging Face folder) opens
    offline with the same logits as mlx-lm's loader."""
    import mlx.core as mx
    from conftest import run_cli
    from mlx_lm.utils import load_model as mlx_lm_load

    from mlxsuite import store
    from mlxsuite.models import lm

    model = lm.build(
        lm.ModelArgs(
            model_type="qwen2",
            hidden_size=32,
            num_hidden_layers=2,
            intermediate_size=64,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=96,
            qkv_bias=True,
        ),
        seed=3,
    )
    snapshot = fake_cache(hf_home, "org/tiny", {}, weights=False)
    config = {k: v for k, v in model.args.to_dict().items() if k not in ("qkv_bias", "qk_norm", "head_dim")}
    (snapshot / "config.json").write_text(json.dumps({**config, "rms_norm_eps": 1e-6}))  # as mlx-lm writes qwen2
    from mlx.utils import tree_flatten

    mx.save_safetensors(str(snapshot / "model.safetensors"), dict(tree_flatten(model.parameters())))
    ours = store.load("org/tiny", "lm")
    assert ours.folder == snapshot
    ref, _ = mlx_lm_load(snapshot)
    tokens = mx.array([[1, 5, 9, 33, 2]])
    assert mx.allclose(ours.model(tokens), ref(tokens), atol=1e-5)
    code, _, err = run_cli(capsys, "generate", "org/tiny", "-p", "x", "-m", "2")
    assert code == 2 and "no tokenizer" in err  # found, loaded, and refused for what it lacks: one line


def test_unreachable_hub_is_one_line_naming_offline_mode(hf_home, monkeypatch, capsys):
    """A Hub that cannot be reached: one line naming HF_HUB_OFFLINE=1, before huggingface_hub's own retries."""
    import huggingface_hub

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens
    for name in hub._PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)

    def retrying_download(*a, **k):
        raise AssertionError("huggingface_hub was asked to download (it retries for ~30 s)")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", retrying_download)
    code, out, err = run(capsys, "convert", "from-hf", "org/name", "x")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "cannot be reached" in err and "HF_HUB_OFFLINE=1" in err and "127.0.0.1:9" in err

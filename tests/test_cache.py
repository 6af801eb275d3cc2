"""`mlxsuite cache`: every folder under ~/.cache/mlxsuite listed with its size; clearing removes only what is named."""

from __future__ import annotations

import json

from conftest import run_cli


def test_cache_list_and_clear(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    root = tmp_path / "mlxsuite"
    (root / "gguf" / "model-kept-abc").mkdir(parents=True)
    (root / "gguf" / "model-kept-abc" / "model.safetensors").write_bytes(b"x" * 3000)
    (root / "tokens").mkdir()
    (root / "tokens" / "a.npy").write_bytes(b"x" * 1000)
    (root / "tokens" / "b.npy").write_bytes(b"x" * 24)
    (root / "blas-1.json").write_text("{}")
    (root / "other").mkdir()
    (root / "other" / "f").write_bytes(b"x" * 7)

    code, out, err = run_cli(capsys, "cache", "list", "--json")
    assert code == 0, err
    rows = {r["name"]: r for r in json.loads(out)}
    assert (rows["gguf"]["bytes"], rows["gguf"]["files"]) == (3000, 1)
    assert (rows["tokens"]["bytes"], rows["tokens"]["files"]) == (1024, 2)
    assert (rows["blas"]["bytes"], rows["blas"]["files"]) == (2, 1)
    assert rows["other"]["bytes"] == 7 and rows["smollm2"]["bytes"] == 0  # an unknown entry is listed too
    code, out, err = run_cli(capsys, "cache", "list")
    assert code == 0 and str(root / "tokens") in out and "token streams" in out, err

    for bad in (["cache", "clear"], ["cache", "clear", "nope"], ["cache", "clear", "tokens", "--all"]):
        code, out, err = run_cli(capsys, *bad)
        assert code == 2 and len(err.strip().splitlines()) == 1, (bad, err)
    assert (root / "tokens" / "a.npy").exists()

    code, out, err = run_cli(capsys, "cache", "clear", "tokens", "other")
    assert code == 0, err
    assert not (root / "tokens").exists() and not (root / "other").exists()
    assert (root / "gguf" / "model-kept-abc" / "model.safetensors").exists() and (root / "blas-1.json").exists()
    code, out, err = run_cli(capsys, "cache", "clear", "--all")
    assert code == 0 and sorted(p.name for p in root.iterdir()) == []

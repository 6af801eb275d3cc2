"""The GGUF conversion cache (`~/.cache/mlxsuite/gguf/`) is bounded: an older version of a file is replaced, and only
the GGUF_CACHE_KEEP most recently used conversions stay."""

import os

from test_gguf import bpe_metadata, hf_weights, train_bpe, write_gguf


def test_gguf_cache_keeps_the_latest_version_and_a_bounded_number(tmp_path, monkeypatch):
    from mlxsuite.convert import from_gguf

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(from_gguf, "GGUF_CACHE_KEEP", 2)
    tk = train_bpe(digits=False)
    weights, meta = hf_weights(tk.get_vocab_size(), tie=True), bpe_metadata(tk, "gpt-2")
    for name in ("a", "b", "c"):
        write_gguf(tmp_path / f"{name}.gguf", weights, meta)
    a = from_gguf.gguf_model_folder(tmp_path / "a.gguf")
    os.utime(tmp_path / "a.gguf", ns=(1, 1))  # a new version of a.gguf: the old conversion goes
    a2 = from_gguf.gguf_model_folder(tmp_path / "a.gguf")
    assert a2 != a and not a.exists() and a2.is_dir()
    b = from_gguf.gguf_model_folder(tmp_path / "b.gguf")
    os.utime(a2, (1, 1))  # a2 least recently used
    c = from_gguf.gguf_model_folder(tmp_path / "c.gguf")
    assert sorted(p.name for p in c.parent.iterdir()) == sorted([b.name, c.name])

"""Corpus loading and splits, packed batches, the tokenizer and its unigram table."""

import json

import numpy as np
import pytest

from mlxsuite.data import corpus as data
from mlxsuite.data.tokenizer import Tokenizer, train_tokenizer, unigram_probs
from mlxsuite.platform.errors import UserError


@pytest.fixture(scope="module")
def tok(small_corpus, tmp_path_factory):
    corpus = data.load_corpus(str(small_corpus))
    return train_tokenizer(corpus.train, 512, tmp_path_factory.mktemp("tok") / "tokenizer.model")


def test_stdlib_corpus_is_split_by_file_deterministically():
    a, b = data.load_corpus(), data.load_corpus("stdlib")
    assert len(a.train) > 1000 and 10 < len(a.val) < 200
    assert a.fingerprint == b.fingerprint and a.val == b.val
    assert not set(a.val) & set(a.train[:50])


def test_user_corpora(tmp_path):
    (tmp_path / "a.txt").write_text("hello world\n" * 100)
    assert data.load_corpus(str(tmp_path / "a.txt")).train
    jl = tmp_path / "c.jsonl"
    jl.write_text("\n".join(json.dumps({"text": f"document {i} " * 20}) for i in range(200)))
    c = data.load_corpus(str(jl))
    assert len(c.train) + len(c.val) == 200 and c.val


@pytest.mark.parametrize(
    "content,message",
    [(b"", "empty"), (b"\x00\x01\x02binary", "binary"), (b"\xff\xfe\xfa not utf8", "UTF-8"), (b'{"txt": 1}\n', "text")],
)
def test_bad_corpora_are_refused(tmp_path, content, message):
    path = tmp_path / ("bad.jsonl" if b"txt" in content else "bad.txt")
    path.write_bytes(content)
    with pytest.raises(UserError, match=message):
        data.load_corpus(str(path))
    with pytest.raises(UserError, match="not found"):
        data.load_corpus(str(tmp_path / "missing.txt"))


def test_tokenizer_round_trip_and_settings(tok):
    assert tok.vocab_size == 512
    text = "def f(x):\n    return x + 12345  # digits split\n\n\tdone\n"
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    digits = [tok.sp.id_to_piece(i) for i in tok.encode("12345")]
    assert all(len(p.strip("▁")) <= 1 for p in digits)  # split_digits
    assert tok.sp.pad_id() == 3 and tok.sp.id_to_piece(tok.encode("\u4e2d")[-1]).startswith("<0x")  # byte fallback
    reloaded = Tokenizer(tok.path)
    assert reloaded.encode(text) == ids


def test_unigram_table_sums_to_one_and_covers_all_ids(tok, small_corpus):
    corpus = data.load_corpus(str(small_corpus))
    stream = data.encode_docs(tok, corpus.train)
    p = unigram_probs(stream, tok.vocab_size)
    assert p.shape == (512,) and np.isclose(p.sum(), 1.0) and (p > 0).all()
    counts = np.bincount(stream, minlength=512)
    unseen = counts == 0
    assert np.allclose(p[unseen], 1 / (counts.sum() + unseen.sum()))  # unseen ids count 1


def test_batches_are_a_function_of_the_step_and_shard_by_rank():
    tokens = np.arange(10_001, dtype=np.int32)
    full = data.Batches(tokens, 16, 8, seed=3)
    again = data.Batches(tokens, 16, 8, seed=3)
    for step in (0, 5, full.steps_per_epoch + 2):
        b = full(step)
        assert b.shape == (8, 17) and (np.diff(b, axis=1) == 1).all()
        np.testing.assert_array_equal(b, again(step))
        shards = [data.Batches(tokens, 16, 8, seed=3, rank=r, size=2)(step) for r in range(2)]
        np.testing.assert_array_equal(np.concatenate([shards[0], shards[1]])[np.argsort(np.r_[0:8:2, 1:8:2])], b)


def test_suggested_vocabulary_sizes_are_accepted(tmp_path):
    """Every vocabulary size an error suggests trains: follow each suggestion (a small corpus that fits none says
    so instead of suggesting one)."""
    import re

    from mlxsuite.data.tokenizer import train_tokenizer
    from mlxsuite.platform.errors import UserError

    corpora = {
        "tiny": ["hello world, a tiny corpus\n" * 40],
        "mixed": ["".join(f"{chr(0x4E00 + i)} word{i % 50} x = {i}\n" for i in range(400))],
    }
    followed = 0
    for texts in corpora.values():
        for size in (100, 320, 8192):
            try:
                train_tokenizer(texts, size, tmp_path / "t.model")
                continue
            except UserError as e:
                hint = re.search(r"(?:`vocab_size`|--vocab-size|>=) (\d+)", str(e))
                if hint is None:
                    assert "corpus" in str(e), e
                    continue
            train_tokenizer(texts, int(hint.group(1)), tmp_path / "t.model")  # the suggestion trains
            followed += 1
    assert followed >= 3

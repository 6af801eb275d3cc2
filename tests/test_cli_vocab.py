"""`mlxsuite vocab predict | plan | fit-compression`, run in-process through the real entry point."""

import json
import sysconfig
from pathlib import Path

import pytest
from conftest import run_cli as run

from mlxsuite.vocab import scaling


def run_json(capsys, *args):
    code, out, err = run(capsys, *args, "--json")
    assert code == 0, err
    return json.loads(out)


def test_predict_json_shape_and_values(capsys):
    doc = run_json(capsys, "vocab", "predict", "--nnv", "7e9")
    assert set(doc) == {"nnv", "d", "approaches"}
    assert doc["nnv"] == 7e9 and doc["d"] == 4096
    assert list(doc["approaches"]) == ["isoflops", "derivative", "parametric"]
    for approach in doc["approaches"].values():
        assert set(approach) == {"nv", "vocab", "flops"}
        assert approach["flops"] == pytest.approx(7.0524e21, rel=1e-4)
    got = {k: (v["nv"], v["vocab"]) for k, v in doc["approaches"].items()}
    assert got == {
        "isoflops": (255_102_858, 62_280),
        "derivative": (276_276_206, 67_450),
        "parametric": (243_906_869, 59_547),
    }


def test_predict_with_budget_moves_only_the_parametric_approach(capsys):
    doc = run_json(capsys, "vocab", "predict", "--nnv", "2.87e9", "--flops", "2.3e21")
    a = doc["approaches"]
    assert a["parametric"]["flops"] == 2.3e21
    assert a["parametric"]["vocab"] == pytest.approx(42_211, rel=1e-4)
    assert a["isoflops"]["flops"] == pytest.approx(1.1855e21, rel=1e-4)
    assert a["isoflops"]["vocab"] == pytest.approx(37_942, rel=1e-4)


def test_predict_model_and_d(capsys):
    doc = run_json(capsys, "vocab", "predict", "--model", "llama2-70b")
    assert doc["nnv"] == 68_452_360_192 and doc["d"] == 8192
    assert doc["approaches"]["parametric"]["vocab"] == pytest.approx(213_788, rel=1e-4)
    # N_nv beyond the d table works once d is given
    doc = run_json(capsys, "vocab", "predict", "--nnv", "2e12", "--d", "32768")
    assert doc["d"] == 32768 and doc["approaches"]["isoflops"]["vocab"] > 0


def test_predict_table(capsys):
    code, out, err = run(capsys, "vocab", "predict", "--model", "llama3-8b")
    assert code == 0, err
    assert "62,129" in out and "llama3-8b" in out and "V* =" in out


def test_predict_with_own_compression_refits_gamma(capsys, tmp_path):
    path = tmp_path / "f.json"
    path.write_text(json.dumps(scaling.Compression(0.008, -0.19, 1.4).to_dict()))
    paper = run_json(capsys, "vocab", "predict", "--nnv", "7e9")["approaches"]
    own = run_json(capsys, "vocab", "predict", "--nnv", "7e9", "--compression", str(path))["approaches"]
    assert own["isoflops"] == paper["isoflops"] and own["parametric"] == paper["parametric"]
    assert own["derivative"]["vocab"] != paper["derivative"]["vocab"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--nnv", "-5"], "--nnv must be a positive number"),
        (["--nnv", "0"], "--nnv must be a positive number"),
        (["--nnv", "nan"], "--nnv must be a positive number"),
        (["--nnv", "inf"], "--nnv must be a positive number"),
        (["--nnv", "7e9", "--flops", "-1"], "--flops must be a positive number"),
        (["--nnv", "2e12"], "give the embedding dimension"),
        (["--nnv", "7e9", "--d", "0"], "--d must be a positive number"),
        ([], "exactly one of --nnv or --model"),
        (["--nnv", "7e9", "--model", "llama2-7b"], "exactly one of --nnv or --model"),
        (["--model", "gpt-9"], "unknown model"),
        (["--nnv", "7e9", "--compression", "/nonexistent/f.json"], "cannot read compression file"),
    ],
)
def test_predict_errors(capsys, args, message):
    code, out, err = run(capsys, "vocab", "predict", *args, "--json")
    assert code == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1 and message in err


def test_plan_json(capsys):
    doc = run_json(capsys, "vocab", "plan", "--flops", "1.2953e21")
    assert set(doc) == {"flops", "approach", "nnv", "d", "nv", "vocab", "tokens", "characters", "preset"}
    assert doc["nnv"] == pytest.approx(3e9, rel=1e-4) and doc["d"] == 3200
    assert doc["vocab"] == pytest.approx(36_648, rel=1e-4)
    assert doc["nv"] == doc["vocab"] * doc["d"]
    # the budget is spent exactly: C = 6 (N_nv + V·d) D, and D = H·f(V)
    assert 6 * (doc["nnv"] + doc["nv"]) * doc["tokens"] == pytest.approx(1.2953e21, rel=1e-12)
    assert doc["tokens"] == pytest.approx(scaling.tokens_from_characters(doc["characters"], doc["vocab"]), rel=1e-12)
    assert doc["preset"]["name"] == "vocab-2870m"
    assert doc["preset"]["vocab"] == pytest.approx(36_000, rel=0.05)


def test_plan_small_budget_and_approaches(capsys):
    doc = run_json(capsys, "vocab", "plan", "--flops", "1e17")
    assert doc["preset"]["name"] == "vocab-33m"
    iso = run_json(capsys, "vocab", "plan", "--flops", "1.2953e21", "--approach", "isoflops")
    assert iso["vocab"] == pytest.approx(39_367, rel=1e-4)
    der = run_json(capsys, "vocab", "plan", "--flops", "1.2953e21", "--approach", "derivative")
    assert der["vocab"] == pytest.approx(42_538, rel=1e-4)
    wide = run_json(capsys, "vocab", "plan", "--flops", "1e30", "--d", "65536")
    assert wide["d"] == 65536 and wide["nnv"] > 1e12


def test_plan_table_and_errors(capsys):
    code, out, err = run(capsys, "vocab", "plan", "--flops", "1e19")
    assert code == 0, err
    assert "closest preset" in out
    for bad in ("0", "-1e20", "nan", "1e30"):
        code, out, err = run(capsys, "vocab", "plan", "--flops", bad, "--json")
        assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, (bad, err)


# typer >= 0.20 raises the exceptions of its vendored click (typer._click), not click.UsageError: mlxsuite.cli.main
# matches them by class name, so a number that does not parse is one line, not a traceback.
@pytest.mark.parametrize(
    "args",
    [
        ["predict", "--nnv", "seven"],
        ["predict", "--nnv", "7e9", "--flops", "abc"],
        ["plan", "--flops", "lots"],
        ["plan", "--flops", "1e20", "--approach", "bogus"],
    ],
)
def test_numbers_that_do_not_parse(capsys, args):
    code, out, err = run(capsys, "vocab", *args, "--json")
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    """About 400 KB of Python source from the standard library, as 4 KB files (so a few land in validation)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    folder = tmp_path_factory.mktemp("corpus")
    n = 0
    for path in sorted(root.glob("*.py")):
        text = path.read_text(encoding="utf-8", errors="ignore")
        for start in range(0, len(text), 4000):
            (folder / f"{n:04d}.txt").write_text(text[start : start + 4000])
            n += 1
        if n >= 100:
            break
    return folder


def test_fit_compression(capsys, small_corpus, tmp_path):
    save = tmp_path / "f.json"
    args = ("vocab", "fit-compression", "--corpus", str(small_corpus), "--sizes", "1024,512,2048,768")
    doc = run_json(capsys, *args, "--save", str(save))
    assert doc["sizes"] == [512, 768, 1024, 2048]
    tpc = doc["tokens_per_char"]
    assert all(0 < t < 1 for t in tpc) and tpc == sorted(tpc, reverse=True)
    assert doc["r2"] > 0.95 and doc["relative_mse"] < 1e-3
    assert json.loads(save.read_text()) == doc
    assert scaling.Compression.load(save) == scaling.Compression.from_dict(doc)
    code, out, err = run(capsys, "vocab", "predict", "--nnv", "1e9", "--compression", str(save))
    assert code == 0, err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--sizes", "512,1024"], "at least 3"),
        (["--sizes", "512,x"], "comma-separated"),
        (["--sizes", "100,512,1024"], "too small"),
        # byte fallback (256) + special pieces + every distinct character must fit in the vocabulary
        (["--sizes", "320,512,1024"], "vocabulary size 320 is too small"),
        (["--sizes", "512,768,1024", "--save", "/nonexistent/dir/f.json"], "does not exist"),
        (["--sizes", "512,768,1024", "--corpus", "/nonexistent/corpus.txt"], "corpus not found"),
    ],
)
def test_fit_compression_errors(capsys, small_corpus, args, message):
    code, out, err = run(capsys, "vocab", "fit-compression", "--corpus", str(small_corpus), *args)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and message in err

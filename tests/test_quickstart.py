"""The quickstart end to end with tiny settings: both tables in one document, and a second run reuses everything."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import mlxsuite  # noqa: F401  (fast BLAS before mlx.core)
from mlxsuite.bench import ttft
from mlxsuite.platform.errors import UserError
from mlxsuite.quickstart import QuickstartConfig, model_slug, run_quickstart


def tiny_config(corpus) -> QuickstartConfig:
    return QuickstartConfig(
        name="qs",
        preset="micro",
        vocab_size=512,
        seq_len=32,
        batch_size=4,
        steps=3,
        kvp_steps=2,
        kvp_batch_size=4,
        corpus=str(corpus),
        model_overrides={"num_hidden_layers": 4},
        prompt_len=8,
        cont_len=4,
        samples=2,
        agree_tokens=3,
        lengths=(16, 40),
        reps=1,
        warmup=0,
    )


def test_quickstart_tables_and_reuse(small_corpus, monkeypatch):
    monkeypatch.setattr(ttft, "GEMM_N", 128)
    events = []
    cfg = tiny_config(small_corpus)
    r = run_quickstart(cfg, callback=lambda e, i: events.append((e, i)))
    json.dumps(r)  # one JSON document
    stages = [i for e, i in events if e == "stage"]
    assert [s["name"] for s in stages] == ["base", "kvp", "quality", "ttft"] and not any(s["reused"] for s in stages)
    assert {e for e, _ in events} >= {"start", "step", "measure"}
    assert r["base"]["layers"] == 4 and r["kvp"]["aux_layers"] == 2 and r["kvp"]["param_ratio"] > 1
    table = r["ttft"]["table"]
    assert [row["prompt_tokens"] for row in table] == [16, 40]
    for row in table:
        assert row["base"]["ttft_reduction"] == 1.0
        for m in ("base", "aux", "kvp"):
            assert row[m]["median_s"] > 0
        assert row["kvp"]["flops_reduction"] > 1 and row["aux"]["flops_reduction"] > 1
    q = r["quality"]
    assert set(q["methods"]) == {"base", "baseline", "aux-joint", "kvp"}
    for v in q["methods"].values():
        assert v["continuation_ce"] > 0 and 0 <= v["first_token_acc"] <= 1 and 0 <= v["agree_token_match"] <= 1
    assert q["methods"]["base"]["agree_token_match"] == q["methods"]["base"]["agree_exact"] == 1.0
    # the second run reuses the base, the pair and both results
    events.clear()
    again = run_quickstart(cfg, callback=lambda e, i: events.append((e, i)))
    assert all(i["reused"] for e, i in events if e == "stage")
    assert not any(e in ("start", "step", "measure") for e, _ in events)
    assert again["ttft"]["table"] == table and again["quality"]["methods"] == q["methods"]
    assert all(s["reused"] for s in again["stages"].values())
    # changed TTFT settings redo only the TTFT
    events.clear()
    cfg.lengths = (16,)
    third = run_quickstart(cfg, callback=lambda e, i: events.append((e, i)))
    assert [i["reused"] for e, i in events if e == "stage"] == [True, True, True, False]
    assert [row["prompt_tokens"] for row in third["ttft"]["table"]] == [16]
    # --model: the same pipeline on a model the user brings (here the base just trained): nothing trains a base,
    # the pair is built on that model's weights (its predictor from the identity, as `quickstart --model` does)
    # under the same --name, and the first pair stays byte-identical (its name is derived from the model)
    events.clear()
    first_pair = folder_bytes(Path(r["kvp"]["folder"]))
    mine = QuickstartConfig(**{**cfg.__dict__, "model": r["base"]["folder"], "predictor_init": "identity"})
    theirs = run_quickstart(mine, callback=lambda e, i: events.append((e, i)))
    assert [i["reused"] for e, i in events if e == "stage"] == [True, False, False, False]
    assert theirs["base"]["params"] == r["base"]["params"] and theirs["kvp"]["name"] == "qs-qs-lm-kvp"
    assert theirs["quality"]["methods"]["base"]["continuation_ce"] == q["methods"]["base"]["continuation_ce"]
    assert folder_bytes(Path(r["kvp"]["folder"])) == first_pair
    # a name that holds another base's pair is refused, not overwritten
    other = QuickstartConfig(**{**mine.__dict__, "name": "qs-qs-lm", "model": None, "steps": 1})
    other_base = Path(theirs["kvp"]["folder"]).parent / other.base_name
    shutil.copytree(r["base"]["folder"], other_base)
    (other_base / "model.safetensors").write_bytes((other_base / "model.safetensors").read_bytes() + b" ")
    second_pair = folder_bytes(Path(theirs["kvp"]["folder"]))
    assert other.kvp_name == theirs["kvp"]["name"]
    with pytest.raises(UserError, match="pair of another base"):
        run_quickstart(other)
    assert folder_bytes(Path(theirs["kvp"]["folder"])) == second_pair


def folder_bytes(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    "ref,slug",
    [
        ("smollm2", "smollm2"),
        ("Qwen/Qwen2.5-0.5B@main", "qwen2.5-0.5b"),
        ("~/x/SmolLM2-135M.Q4_1.gguf", "smollm2-135m.q4_1"),
        ("./models/my model/", "my-model"),
    ],
)
def test_model_slug(ref, slug):
    assert model_slug(ref) == slug
    assert QuickstartConfig(model=ref).kvp_name == f"quickstart-{slug}-kvp"
    assert QuickstartConfig().kvp_name == "quickstart-kvp"


def test_quickstart_cli_json(small_corpus, monkeypatch, capsys):
    """The command's --json document: both tables (on a finished run, so the test stays fast)."""
    from conftest import run_cli

    import mlxsuite.cli.quickstart as cli

    monkeypatch.setattr(ttft, "GEMM_N", 128)
    cfg = tiny_config(small_corpus)
    run_quickstart(cfg)
    monkeypatch.setattr(cli, "QuickstartConfig", lambda **kw: QuickstartConfig(**{**cfg.__dict__, **kw}))
    code, stdout, stderr = run_cli(
        capsys, "quickstart", "--name", "qs", "--steps", "3", "--kvp-steps", "2", "--reps", "1", "--json"
    )
    assert code == 0, stderr
    doc = json.loads(stdout)
    assert doc["stages"]["ttft"]["reused"] and {"ttft", "quality"} <= set(doc)
    code, stdout, stderr = run_cli(
        capsys, "quickstart", "--name", "qs", "--steps", "3", "--kvp-steps", "2", "--reps", "1"
    )
    assert code == 0, stderr
    assert "Time to first token" in stdout and "KV Prediction" in stdout and "OE-LP baseline" in stdout


@pytest.mark.parametrize("field,value", [("steps", 0), ("reps", 0)])
def test_quickstart_rejects_bad_settings(field, value):
    from mlxsuite.platform.errors import UserError

    with pytest.raises(UserError):
        run_quickstart(QuickstartConfig(**{field: value}))

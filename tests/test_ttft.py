"""`mlxsuite bench ttft` and the prefill behind it: report schema, statistics, FLOPs, mlx-lm comparison, errors,
and chunked prefill equal to one full forward pass. Tiny models, two repetitions; no timing assertions."""

import json
import math
from pathlib import Path

import mlxsuite  # noqa: F401  (loads the fast BLAS before mlx.core)
import mlx.core as mx
import numpy as np
import pytest
from conftest import run_cli

from mlxsuite import ttft
from mlxsuite import flops
from mlxsuite.generate import prefill, sample
from mlxsuite.models import kernels
from mlxsuite.models import lm


@pytest.fixture(autouse=True)
def quick_roofline(monkeypatch):
    """The report's GEMM rate from a small matmul: 1024³ between every two trials adds up on a loaded machine."""
    monkeypatch.setattr(ttft, "GEMM_N", 128)


def bench_json(capsys, *args):
    code, stdout, stderr = run_cli(capsys, "bench", "ttft", *args, "--json")
    assert code == 0, stderr
    return json.loads(stdout), stderr


# ---- report schema and statistics ---------------------------------------------------------------------------


def test_json_schema_and_statistics(capsys):
    report, _ = bench_json(capsys, "micro", "--prompt-lengths", "16,40", "--batch-sizes", "1,2", "--reps", "3")
    for key in ("device", "blas", "gemm_gflops", "results", "prefill_step", "load_average", "notes"):
        assert key in report
    assert report["device"] == "cpu" and report["gemm_gflops"] > 0
    assert [(r["prompt_tokens"], r["batch"]) for r in report["results"]] == [(16, 1), (40, 1), (16, 2), (40, 2)]
    args = lm.preset_args("micro", 4096)
    for r in report["results"]:
        assert r["mode"] == "base"
        t = r["ttft_s"]
        s = np.array(t["samples"])
        assert len(s) == 3 and (s > 0).all()
        assert t["median"] == pytest.approx(np.median(s))
        assert t["p10"] == pytest.approx(np.percentile(s, 10))
        assert t["p90"] == pytest.approx(np.percentile(s, 90))
        assert t["mean"] == pytest.approx(s.mean())
        assert t["std"] == pytest.approx(s.std(ddof=1))
        T, B = r["prompt_tokens"], r["batch"]
        assert r["prompt_tps"] == pytest.approx(B * T / t["median"])
        assert r["flops"] == flops.prefill(args, T, B)
        assert r["gflops_per_s"] == pytest.approx(r["flops"] / t["median"] / 1e9)
        assert r["roofline_fraction"] == pytest.approx(r["gflops_per_s"] / report["gemm_gflops"])
        assert r["peak_memory_bytes"] > 0


def test_summarize_single_sample_has_no_std():
    s = ttft.summarize([0.5])
    assert s["median"] == s["p10"] == s["p90"] == s["mean"] == 0.5 and s["std"] is None


def test_table_output(capsys):
    code, stdout, _ = run_cli(capsys, "bench", "ttft", "micro", "--prompt-lengths", "8", "--reps", "2")
    assert code == 0
    assert "TTFT ms" in stdout and "roofline" in stdout and "base" in stdout


# ---- FLOPs --------------------------------------------------------------------------------------------------


def test_prefill_flops_by_hand():
    # d=8, 2 layers, 2 heads of head_dim 4 (q = 8), 1 KV head (kv = 4), f=16, V=10; T=3 tokens.
    args = lm.ModelArgs(
        hidden_size=8,
        num_hidden_layers=2,
        intermediate_size=16,
        num_attention_heads=2,
        num_key_value_heads=1,
        vocab_size=10,
    )
    # Linear multiply-adds per token and layer: q_proj 8·8=64, k_proj+v_proj 2·8·4=64, o_proj 8·8=64,
    # gate+up+down 3·8·16=384 -> 576; 2 layers -> 1152; 2 FLOPs each -> 2304 per token; 3 tokens -> 6912.
    linear = 3 * 2 * 2 * (64 + 64 + 64 + 384)
    assert linear == 6912
    # Causal attention: 3·4/2 = 6 (query, key) pairs; each costs 2·4 (q·k) + 2·4 (p·v) = 16 per head,
    # 2 heads and 2 layers -> 64 per pair -> 384.
    attention = 6 * 16 * 2 * 2
    assert attention == 384
    # LM head on the last token only: 2·V·d = 2·10·8 = 160.
    head = 160
    assert flops.prefill(args, 3, 1) == linear + attention + head == 7456
    assert flops.prefill(args, 3, 2) == 2 * 7456


# ---- modes --------------------------------------------------------------------------------------------------


def test_compare_mlx_lm_reports_ratio(capsys):
    report, stderr = bench_json(
        capsys, "micro", "--prompt-lengths", "24", "--batch-sizes", "1,2", "--reps", "2", "--compare-mlx-lm"
    )
    rows = {(r["mode"], r["batch"]): r for r in report["results"]}
    assert set(rows) == {("base", 1), ("mlx-lm", 1), ("base", 2)}  # mlx-lm: batch 1 only
    base = rows[("base", 1)]
    assert base["speedup_vs_mlx_lm"] > 0 and math.isfinite(base["speedup_vs_mlx_lm"])
    assert base["speedup_vs_mlx_lm"] == pytest.approx(
        rows[("mlx-lm", 1)]["ttft_s"]["median"] / base["ttft_s"]["median"]
    )
    assert "speedup_vs_mlx_lm" not in rows[("base", 2)]
    assert any("batch 1 only" in n for n in report["notes"]) and "batch 1 only" in stderr


def test_a_mode_is_a_function_with_its_flops():
    """How KV Prediction plugs in: register a builder returning Mode(first_token, flops)."""
    model = lm.build(lm.preset_args("micro", 64), seed=0)

    def builder(setup):
        def first_token(tokens):
            return sample(prefill(setup.model, tokens[:, -8:], setup.model.make_cache(), setup.prefill_step))

        return ttft.Mode("last-8", first_token, lambda T, B: flops.prefill(setup.model.args, min(T, 8), B))

    class Tok:
        def decode(self, ids):
            return " ".join(map(str, ids))

        def encode(self, text):
            return text.split()

    ttft.register_mode("last-8", builder)
    try:
        seen = []
        report = ttft.run(
            ttft.Setup(model, 16),
            ["base", "last-8"],
            [(20, 1)],
            reps=2,
            warmup=0,
            tokenizer=Tok(),
            progress=lambda done, total, what: seen.append((done, total)),
        )
    finally:
        del ttft.MODES["last-8"]
    rows = {r["mode"]: r for r in report["results"]}
    assert rows["last-8"]["flops"] == flops.prefill(model.args, 8, 1) < rows["base"]["flops"]
    assert rows["base"]["tokenize_tokens"] == 20 and len(rows["base"]["tokenize_s"]["samples"]) == 2
    assert seen[-1] == (4, 4)


def test_mode_errors():
    with pytest.raises(ttft.UserError, match="unknown mode 'nope'"):
        ttft.check_mode_names(["base", "nope"])
    with pytest.raises(ttft.UserError, match="needs a KV Prediction pair"):
        ttft.check_mode_names(["kvp"])
    ttft.check_mode_names(["base", "aux", "kvp"], kvp=True)


# ---- KV Prediction modes ------------------------------------------------------------------------------------


@pytest.fixture
def stored_pair(tmp_path):
    """A stored base (micro-sized, 4 layers, with a tokenizer) and an untrained LP-0.50 pair for it."""
    from mlxsuite import kvp, store
    from mlxsuite.tokenizer import train_tokenizer

    import sysconfig

    root = Path(sysconfig.get_paths()["stdlib"])
    names = ("textwrap.py", "bisect.py", "heapq.py", "shlex.py")
    texts = [(root / n).read_text() for n in names if (root / n).exists()]
    tok = train_tokenizer(texts, 512, tmp_path / "tok" / "tokenizer.model")
    for name, seed in (("base", 0), ("other", 1)):
        model = lm.build(lm.preset_args("micro", tok.vocab_size, num_hidden_layers=4), seed=seed)
        store.save(store.output_path(name), model, tok)
    pair, tok, base_folder, info = kvp.build_pair("base", "prune:0.5")
    meta = {"base": {"name": "base", "path": str(base_folder.resolve()), "sha256": store.weights_hash(base_folder)},
            "aux": {k: v for k, v in info.items() if k != "layer_map"}, "layer_map": info["layer_map"]}
    store.save_pair(store.output_path("pair"), pair, tok, meta)
    return pair


def test_kvp_modes_report_reductions(capsys, stored_pair):
    report, _ = bench_json(capsys, "base", "--kvp", "pair", "--prompt-lengths", "24,40", "--reps", "2",
                           "--prefill-step", "16")
    rows = {(r["mode"], r["prompt_tokens"]): r for r in report["results"]}
    assert set(rows) == {(m, T) for m in ("base", "aux", "kvp") for T in (24, 40)}
    assert report["kvp"]["aux_layers"] == 2 and report["kvp"]["base_layers"] == 4
    aux_args = stored_pair.auxiliary.args
    for T in (24, 40):
        base, aux, kvp = rows[("base", T)], rows[("aux", T)], rows[("kvp", T)]
        assert base["flops"] == flops.prefill(stored_pair.base.args, T, 1)
        assert aux["flops"] == flops.prefill(aux_args, T, 1)
        assert kvp["flops"] == flops.kvp_prefill(stored_pair, T, 1) < base["flops"]
        assert base["ttft_reduction_vs_base"] == 1.0 and base["flops_reduction_vs_base"] == 1.0
        for r in (aux, kvp):
            assert r["ttft_reduction_vs_base"] == pytest.approx(base["ttft_s"]["median"] / r["ttft_s"]["median"])
            assert r["flops_reduction_vs_base"] == pytest.approx(base["flops"] / r["flops"])
            assert r["ttft_over_flops_reduction"] == pytest.approx(
                r["ttft_reduction_vs_base"] / r["flops_reduction_vs_base"])
    # the table shows the reductions
    code, stdout, stderr = run_cli(capsys, "bench", "ttft", "base", "--kvp", "pair", "--modes", "base,kvp",
                                   "--prompt-lengths", "16", "--reps", "1", "--warmup", "0")
    assert code == 0, stderr
    assert "TTFT red." in stdout and "FLOPs red." in stdout and "kvp" in stdout


@pytest.mark.parametrize(
    "args,message",
    [
        (["base", "--modes", "base,aux"], "--kvp"),
        (["other", "--kvp", "pair"], "trained for the base"),
        (["micro", "--kvp", "pair"], "not the preset"),
        (["base", "--kvp", "no-such-pair"], "KVP folder not found"),
    ],
)
def test_kvp_errors(capsys, stored_pair, args, message):
    code, stdout, stderr = run_cli(capsys, "bench", "ttft", *args, "--prompt-lengths", "8", "--reps", "1")
    assert code == 2 and message in stderr and stdout == ""
    assert len([line for line in stderr.splitlines() if line.strip()]) == 1, stderr


# ---- errors: one line on stderr, exit 2 -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["no-such-model"],
        ["micro", "--prompt-lengths", "4096"],  # longer than the context (2048)
        ["micro", "--prompt-lengths", ""],
        ["micro", "--prompt-lengths", "0,8"],
        ["micro", "--batch-sizes", "-1"],
        ["micro", "--reps", "0"],
        ["micro", "--warmup", "-1"],
        ["micro", "--prefill-step", "0"],
        ["micro", "--vocab-size", "0"],
        ["micro", "--modes", "kvp"],
        ["micro", "--modes", "fast"],
        ["micro", "--paper-regime", "--batch-sizes", "2"],
        ["micro", "--plot", "out.jpg"],
        ["micro", "--device", "tpu"],
    ],
)
def test_errors_exit_2_with_one_line(capsys, args):
    code, stdout, stderr = run_cli(capsys, "bench", "ttft", *args)
    assert code == 2
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), stderr
    assert stdout == ""


def test_plot_without_matplotlib_is_a_clear_error(capsys, monkeypatch, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    code, _, stderr = run_cli(capsys, "bench", "ttft", "micro", "--plot", str(tmp_path / "t.png"))
    assert code == 2 and "matplotlib" in stderr and not (tmp_path / "t.png").exists()


def test_plot(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "ttft.png"
    code, _, stderr = run_cli(
        capsys,
        "bench",
        "ttft",
        "micro",
        "--prompt-lengths",
        "8,16",
        "--reps",
        "2",
        "--warmup",
        "0",
        "--plot",
        str(path),
    )
    assert code == 0, stderr
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["ttft.png"]


# ---- prefill: any chunk size = one full forward pass = mlx-lm ---------------------------------------------------


def kernels_on(on: bool):
    """The model's forward with the fast CPU kernels where they apply (on), or the plain MLX ops (off)."""
    import contextlib

    return contextlib.nullcontext() if on else kernels.disabled()

VARIANTS = [
    dict(),
    dict(num_key_value_heads=1, qk_norm=True),  # mlx-lm's qwen3
    dict(rope_traditional=True, attention_bias=True, mlp_bias=True, tie_word_embeddings=False),
]


@pytest.mark.parametrize("overrides", VARIANTS, ids=["plain", "gqa-qknorm", "traditional-bias-untied"])
def test_chunked_prefill_equals_full_forward(overrides):
    model = lm.build(lm.preset_args("micro", 128, **overrides), seed=1)
    mx.random.seed(3)
    tokens = mx.random.randint(0, 128, (2, 45))
    full_cache = model.make_cache()
    full = model(tokens, full_cache)[:, -1]
    reference = ttft.mlx_lm_model(model)(tokens)[:, -1]
    assert mx.allclose(full, reference, atol=1e-5, rtol=1e-5)
    assert kernels.available(model.layers, mx.float32) == ttft.platform.compiler_available()
    for fused in (True, False):
        for step in (1, 7, 16, 44, 1000):
            cache = model.make_cache()
            with kernels_on(fused):
                logits = prefill(model, tokens, cache, step)
            assert mx.allclose(logits, full, atol=1e-4, rtol=1e-4), (fused, step)
            assert mx.allclose(logits, reference, atol=1e-4, rtol=1e-4), (fused, step)
            for c, f in zip(cache, full_cache):
                assert c.offset == f.offset == 45
                for a, b in zip(c.keys_and_values(), f.keys_and_values()):
                    assert mx.allclose(a, b, atol=1e-4, rtol=1e-4), (fused, step)


def test_fused_prefill_continues_a_cache():
    """A second prompt appended to a filled cache (positions continue) gives the full forward's last logits."""
    model = lm.build(lm.preset_args("micro", 64), seed=2)
    tokens = mx.random.randint(0, 64, (1, 30))
    cache = model.make_cache()
    prefill(model, tokens[:, :12], cache, 5)  # all 12 tokens go into the cache (the last with the full model)
    logits = prefill(model, tokens[:, 12:], cache, 6)
    assert mx.allclose(logits, model(tokens)[:, -1], atol=1e-4, rtol=1e-4)


def test_fused_path_only_where_it_applies():
    model = lm.build(lm.preset_args("micro", 64), seed=0, dtype=mx.bfloat16)
    assert not kernels.available(model.layers, model.model.norm.weight.dtype)

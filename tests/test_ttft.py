"""`mlxsuite bench ttft` and the prefill behind it: records, statistics, FLOPs, the schedule (issue 16), several
models, decode speed (-g), prefix caching, mlx-lm comparison, errors, and chunked prefill equal to one full forward
pass. Tiny models, two repetitions; no timing assertions."""

import importlib.metadata
import itertools
import json
import math
import platform
import re
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from conftest import run_cli

import mlxsuite  # noqa: F401  (loads the fast BLAS before mlx.core)
from mlxsuite.bench import report as ttft_report
from mlxsuite.bench import ttft
from mlxsuite.generate import default_prefill_step, generate_tokens, prefill, sample
from mlxsuite.models import flops, kernels, lm


@pytest.fixture(autouse=True)
def quick_roofline(monkeypatch):
    """The report's GEMM rate from a small matmul: 1024³ between every two trials adds up on a loaded machine."""
    monkeypatch.setattr(ttft, "GEMM_N", 128)


def bench_json(capsys, *args):
    """The records `-o json` prints, and stderr."""
    code, stdout, stderr = run_cli(capsys, "bench", "ttft", *args, "-o", "json")
    assert code == 0, stderr
    recs = json.loads(stdout)
    assert all(list(r) == list(ttft_report.FIELDS) for r in recs)
    return recs, stderr


# ---- report schema and statistics ---------------------------------------------------------------------------


def test_records_carry_statistics_and_metadata(capsys):
    recs, _ = bench_json(capsys, "micro", "-p", "16,40", "-b", "1,2", "-r", "3")
    assert sorted((r["prompt_tokens"], r["batch"]) for r in recs) == [(16, 1), (16, 2), (40, 1), (40, 2)]
    args = lm.preset_args("micro", 4096)
    for r in recs:
        assert r["model"] == "micro" and r["mode"] == "base" and r["cached_tokens"] == 0
        s = np.array(r["ttft_ms_samples"])
        assert len(s) == 3 and (s > 0).all()
        assert r["ttft_ms"] == pytest.approx(np.median(s))
        assert r["ttft_ms_p10"] == pytest.approx(np.percentile(s, 10))
        assert r["ttft_ms_p90"] == pytest.approx(np.percentile(s, 90))
        assert r["ttft_ms_mean"] == pytest.approx(s.mean())
        assert r["ttft_ms_std"] == pytest.approx(s.std(ddof=1))
        T, B = r["prompt_tokens"], r["batch"]
        assert r["prompt_tps"] == pytest.approx(B * T / (r["ttft_ms"] / 1e3))
        assert r["gflop"] == pytest.approx(flops.prefill(args, T, B) / 1e9)
        assert r["gflops_per_s"] == pytest.approx(r["gflop"] / (r["ttft_ms"] / 1e3))
        assert r["roofline"] == pytest.approx(r["gflops_per_s"] / r["gemm_gflops"])
        assert r["peak_memory_gb"] > 0 and r["decode_tps"] is None
        assert r["params"] == args.n_params and r["layers"] == args.num_hidden_layers
        # the run's metadata, in every record
        assert r["device"] == "cpu" and r["dtype"] == "float32" and r["gemm_dtype"] == "float32"
        assert r["mlx_version"] == mx.__version__ and r["python"] == platform.python_version()
        assert r["mlx_lm_version"] == importlib.metadata.version("mlx-lm")
        assert r["mlxsuite_version"] == mlxsuite.__version__
        assert (
            r["reps"] == 3
            and r["warmup"] == 1
            and r["order"] == "rotating"
            and r["prefill_step"] == default_prefill_step(T)
        )
        assert r["timestamp"].endswith("Z") and r["memory_gb"] > 0 and r["chip"]


def test_summarize_single_sample_has_no_std():
    s = ttft.summarize([0.5])
    assert s["median"] == s["p10"] == s["p90"] == s["mean"] == 0.5 and s["std"] is None


def test_table_output(capsys):
    code, stdout, _ = run_cli(capsys, "bench", "ttft", "micro", "--prompt-lengths", "8", "--reps", "2")
    assert code == 0
    assert "TTFT ms" in stdout and "base" in stdout and "MLX " + mx.__version__ in stdout


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
    recs, stderr = bench_json(capsys, "micro", "-p", "24", "-b", "1,2", "-r", "2", "--compare-mlx-lm")
    rows = {(r["mode"], r["batch"]): r for r in recs}
    assert set(rows) == {("base", 1), ("mlx-lm", 1), ("base", 2)}  # mlx-lm: batch 1 only
    base = rows[("base", 1)]
    assert base["speedup_vs_mlx_lm"] > 0 and math.isfinite(base["speedup_vs_mlx_lm"])
    assert base["speedup_vs_mlx_lm"] == pytest.approx(rows[("mlx-lm", 1)]["ttft_ms"] / base["ttft_ms"])
    assert rows[("base", 2)]["speedup_vs_mlx_lm"] is None
    assert "batch 1 only" in stderr


def test_a_mode_is_a_function_with_its_flops():
    """How KV Prediction plugs in: register a builder returning a Mode (run, flops); prefill_mode builds one on
    the one prefill."""
    model = lm.build(lm.preset_args("micro", 64), seed=0)

    def builder(setup):
        inner = ttft.prefill_mode("last-8", setup.model, setup.prefill_step)
        return ttft.Mode(
            "last-8",
            lambda tokens, cache, n: inner.run(tokens[:, -8:], cache, n),
            lambda T, B, P: flops.prefill(setup.model.args, min(T, 8), B),
        )

    class Tok:
        def decode(self, ids):
            return " ".join(map(str, ids))

        def encode(self, text):
            return text.split()

    ttft.register_mode("last-8", builder)
    try:
        seen = []
        report = ttft.run(
            ttft.Setup(model, 16, tokenizer=Tok()),
            ["base", "last-8"],
            [(20, 1)],
            reps=2,
            warmup=0,
            progress=lambda done, total, what: seen.append((done, total)),
        )
    finally:
        del ttft.MODES["last-8"]
    rows = {r["mode"]: r for r in report["results"]}
    assert rows["last-8"]["flops"] == flops.prefill(model.args, 8, 1) < rows["base"]["flops"]
    assert rows["base"]["tokenize_tokens"] == 20 and len(rows["base"]["tokenize_s"]["samples"]) == 2
    assert seen[-1] == (5, 5)  # 2 rounds × 2 modes, and one untimed trial after the GEMM probe between rounds


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
    import sysconfig

    from mlxsuite import store
    from mlxsuite.data.tokenizer import train_tokenizer
    from mlxsuite.kvp import recipe as kvp

    root = Path(sysconfig.get_paths()["stdlib"])
    names = ("textwrap.py", "bisect.py", "heapq.py", "shlex.py")
    texts = [(root / n).read_text() for n in names if (root / n).exists()]
    tok = train_tokenizer(texts, 512, tmp_path / "tok" / "tokenizer.model")
    for name, seed in (("base", 0), ("other", 1)):
        model = lm.build(lm.preset_args("micro", tok.vocab_size, num_hidden_layers=4), seed=seed)
        store.save(store.output_path(name), model, tok)
    pair, tok, base_folder, info = kvp.build_pair("base", "prune:0.5")
    meta = {
        "base": {"name": "base", "path": str(base_folder.resolve()), "sha256": store.weights_hash(base_folder)},
        "aux": {k: v for k, v in info.items() if k != "layer_map"},
        "layer_map": info["layer_map"],
    }
    store.save_pair(store.output_path("pair"), pair, tok, meta)
    return pair


def test_kvp_modes_report_reductions_and_decode(capsys, stored_pair):
    recs, _ = bench_json(capsys, "base", "--kvp", "pair", "-p", "24,40", "-r", "2", "--prefill-step", "16", "-g", "3")
    rows = {(r["mode"], r["prompt_tokens"]): r for r in recs}
    assert set(rows) == {(m, T) for m in ("base", "aux", "kvp") for T in (24, 40)}
    assert rows[("kvp", 24)]["aux_layers"] == 2 and rows[("base", 24)]["aux_layers"] is None
    aux_args = stored_pair.auxiliary.args
    for T in (24, 40):
        base, aux, kvp = rows[("base", T)], rows[("aux", T)], rows[("kvp", T)]
        assert base["gflop"] == pytest.approx(flops.prefill(stored_pair.base.args, T, 1) / 1e9)
        assert aux["gflop"] == pytest.approx(flops.prefill(aux_args, T, 1) / 1e9)
        assert kvp["gflop"] == pytest.approx(flops.kvp_prefill(stored_pair, T, 1) / 1e9)
        assert kvp["gflop"] < base["gflop"]
        assert base["ttft_reduction_vs_base"] == 1.0 and base["flops_reduction_vs_base"] == 1.0
        for r in (base, aux, kvp):  # decode speed for every mode, and beside the base's
            assert r["decode_tokens"] == 3 and len(r["decode_tps_samples"]) == 2 and r["decode_tps"] > 0
            assert r["decode_vs_base"] > 0
        for r in (aux, kvp):
            assert r["ttft_reduction_vs_base"] == pytest.approx(base["ttft_ms"] / r["ttft_ms"])
            assert r["flops_reduction_vs_base"] == pytest.approx(base["gflop"] / r["gflop"])
            assert r["ttft_over_flops_reduction"] == pytest.approx(
                r["ttft_reduction_vs_base"] / r["flops_reduction_vs_base"]
            )
    # the table shows the reductions
    code, stdout, stderr = run_cli(
        capsys,
        "bench",
        "ttft",
        "base",
        "--kvp",
        "pair",
        "--modes",
        "base,kvp",
        "--prompt-lengths",
        "16",
        "--reps",
        "1",
        "--warmup",
        "0",
    )
    assert code == 0, stderr
    assert "TTFT red." in stdout and "FLOPs red." in stdout and "kvp" in stdout


@pytest.mark.parametrize(
    "args,message",
    [
        (["base", "--modes", "base,aux"], "--kvp"),
        (["other", "--kvp", "pair"], "trained for the base"),
        (["micro", "--kvp", "pair"], "not the preset"),
        (["base", "--kvp", "no-such-pair"], "KVP folder not found"),
        (["base", "--kvp", "pair", "--prefix-cache", "4"], "does not apply to mode 'kvp'"),
        (["base", "micro", "--kvp", "pair"], "one MODEL"),
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
        ["micro", "--dtype", "int8"],
        ["micro", "-o", "xml"],
        ["micro", "-o", "csv", "--wide"],
        ["micro", "-o", "csv", "--json"],
        ["-p", "8"],  # no model
        ["micro", "-m", "micro"],
        ["micro", "-p", "16", "--prefix-cache", "16"],
        ["micro", "-b", "2", "-g", "4"],
        ["micro", "-g", "-1"],
    ],
)
def test_errors_exit_2_with_one_line(capsys, args):
    code, stdout, stderr = run_cli(capsys, "bench", "ttft", *args)
    assert code == 2
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), stderr
    assert stdout == ""


def test_table_fits_100_columns(capsys, stored_pair):
    """Many columns apply (several modes, mlx-lm, decode, a prefix cache): the default table drops the lowest-
    priority ones until it fits 100 columns; --wide shows them all."""
    args = [
        "bench",
        "ttft",
        "base",
        "--kvp",
        "pair",
        "--modes",
        "base,aux,mlx-lm",
        "-p",
        "12",
        "-r",
        "1",
        "--warmup",
        "0",
        "-g",
        "2",
        "--prefix-cache",
        "4",
    ]
    code, stdout, stderr = run_cli(capsys, *args)
    assert code == 0, stderr
    table = stdout.split("\n\n")[0].splitlines()  # the title and the table, before the metadata paragraph
    assert max(len(line) for line in table) <= 100 and "TTFT ms" in table[1] and "More columns with --wide" in stdout
    assert len(table) == 3 + 2 * 3  # title, header, rule; 2 prompts (uncached, cached) × 3 modes
    code, wide, _ = run_cli(capsys, *args, "--wide")
    assert "std ms" in wide and "GFLOP/s" in wide and "decode vs base" in wide
    assert max(len(line) for line in wide.split("\n\n")[0].splitlines()) > 100


def test_progress_is_plain_lines_on_stderr_when_not_a_terminal(capsys, monkeypatch):
    from mlxsuite.cli import common

    monkeypatch.setattr(common, "PLAIN_EVERY", 0.0)
    code, stdout, stderr = run_cli(capsys, "bench", "ttft", "micro", "-p", "8", "-r", "2", "-o", "json")
    assert code == 0
    json.loads(stdout)  # nothing but the result on stdout
    lines = [line for line in stderr.splitlines() if line.startswith("ttft runs")]
    assert len(lines) >= 3 and re.match(r"ttft runs  (\d+)/\1  done  elapsed \d:\d\d:\d\d$", lines[-1])
    assert any(re.search(r"ttft runs  \d+/\d+  base 8 tokens × 1.*ETA \d:\d\d:\d\d$", line) for line in lines)
    assert "\x1b" not in stderr  # no terminal control codes in a file


# ---- the schedule (issue 16) ----------------------------------------------------------------------------------


def test_schedule_warms_every_configuration_first_and_varies_the_order():
    units = [["base", "kvp"], ["base", "kvp"], ["base"], ["base", "kvp"]]
    warmup, reps = 2, 6
    plan = ttft.schedule(units, warmup, reps)
    first_timed = next(i for i, s in enumerate(plan) if s[0] == "time")
    for u, modes in enumerate(units):  # every unit and mode warmed `warmup` times before any timed trial
        for m in modes:
            assert plan[:first_timed].count(("warm", u, m)) == warmup
    timed = [s for s in plan if s[0] == "time"]
    for u, modes in enumerate(units):  # reps timed trials each, one per round
        for m in modes:
            assert sorted(s[3] for s in timed if s[1:3] == (u, m)) == list(range(reps))
    rounds = [[s[1] for s in timed if s[3] == r] for r in range(reps)]
    orders = [list(dict.fromkeys(r)) for r in rounds]
    assert len({tuple(o) for o in orders}) == reps  # the order of configurations differs in every round
    assert {o[0] for o in orders} == set(range(len(units)))  # each configuration leads some round
    for r in rounds:  # a unit's modes back to back
        assert len(r) == sum(len(m) for m in units) and [u for u, _ in itertools.groupby(r)] == orders[rounds.index(r)]
    for r in range(reps):  # mode order alternating between rounds (ABBA)
        modes_of_0 = [s[2] for s in timed if s[3] == r and s[1] == 0]
        assert modes_of_0 == (units[0] if r % 2 == 0 else units[0][::-1])
    for i, s in enumerate(plan[:-1]):  # no timed trial right after the GEMM probe
        if s[0] == "gemm":
            assert plan[i + 1][0] != "time"
    assert plan.count(("gemm",)) == reps


def test_the_run_follows_the_schedule(monkeypatch):
    """Trials happen in the schedule's order, models interleaved: a spy mode records the calls."""
    calls = []

    def spy(setup):
        inner = ttft.prefill_mode("spy", setup.model, setup.prefill_step)

        def run(tokens, cache, n):
            calls.append((setup.name, tokens.shape[1]))
            return inner.run(tokens, cache, n)

        return ttft.Mode("spy", run, inner.flops)

    ttft.register_mode("spy", spy)
    try:
        setups = [
            ttft.Setup(lm.build(lm.preset_args("micro", 64), seed=s), 16, name=n) for s, n in ((0, "a"), (1, "b"))
        ]
        report = ttft.run(setups, ["spy"], [(8, 1), (12, 1)], reps=3, warmup=1)
    finally:
        del ttft.MODES["spy"]
    units = [("a", 8), ("a", 12), ("b", 8), ("b", 12)]
    expected = [units[s[1]] for s in ttft.schedule([["spy"]] * 4, 1, 3) if s[0] != "gemm"]
    assert calls == expected
    assert {r["model"] for r in report["results"]} == {"a", "b"} and len(report["results"]) == 4


def test_several_models_in_one_run(capsys):
    recs, _ = bench_json(capsys, "-m", "micro", "-m", "tiny", "-p", "8", "-r", "2", "--warmup", "0")
    assert [(r["model"], r["params"]) for r in recs] == [
        ("micro", lm.preset_args("micro", 4096).n_params),
        ("tiny", lm.preset_args("tiny", 4096).n_params),
    ]


def test_roofline_gemm_runs_in_the_models_dtype(capsys):
    recs, _ = bench_json(capsys, "micro", "-p", "8", "-r", "1", "--dtype", "bfloat16")
    assert recs[0]["dtype"] == recs[0]["gemm_dtype"] == "bfloat16"
    assert recs[0]["roofline"] == pytest.approx(recs[0]["gflops_per_s"] / recs[0]["gemm_gflops"])


# ---- decode speed and prefix caching --------------------------------------------------------------------------


def _greedy(model, tokens, n):
    """The reference continuation: generate_tokens on the whole prompt, greedy."""
    return list(generate_tokens(model, tokens[0], n, prefill_step=16))


def test_decode_continues_the_prompt_like_generate_tokens(stored_pair):
    """A mode's run yields the first token then `decode` more, each the greedy continuation: base, aux, mlx-lm
    as generate_tokens gives it on the same model; kvp as the base continues from KV Prediction's cache."""
    from mlxsuite.kvp.recipe import prompt_fill

    mx.random.seed(1)
    tokens = mx.random.randint(0, stored_pair.base.args.vocab_size, (1, 30))
    setup = ttft.Setup(stored_pair.base, 16, kvp=stored_pair)
    modes = {m.name: m for m in ttft.build_modes(["base", "aux", "kvp", "mlx-lm"], setup)}

    def tokens_of(mode, n=5):
        return [int(mx.array(t).reshape(-1)[0].item()) for t in modes[mode].run(tokens, None, n)]

    assert tokens_of("base") == _greedy(stored_pair.base, tokens, 6)
    assert tokens_of("aux") == _greedy(stored_pair.auxiliary, tokens, 6)
    assert tokens_of("mlx-lm") == _greedy(stored_pair.base, tokens, 6)
    cache, fill = prompt_fill(stored_pair)
    assert tokens_of("kvp") == list(
        generate_tokens(stored_pair.base, tokens[0], 6, cache=cache, fill=fill, prefill_step=16)
    )
    assert len(tokens_of("base", 0)) == 1


@pytest.mark.parametrize("mode", ["base", "mlx-lm"])
def test_prefix_cache_ends_equal_to_an_uncached_prefill(mode):
    """The prefix-cache trial (a copy of a cache holding the first P tokens, then the rest through the mode) ends
    with the cache an uncached prefill of the whole prompt gives, and the same first token; the saved prefix
    cache is left as it was."""
    model = lm.build(lm.preset_args("micro", 128, num_key_value_heads=2), seed=3)
    m = ttft.build_modes([mode], ttft.Setup(model, 7))[0]
    mx.random.seed(2)
    tokens = mx.random.randint(0, 128, (1, 40))
    P = 17
    saved = m.prefix_cache(tokens[:, :P])
    before = [mx.array(a) for c in saved for a in c.keys_and_values()]
    cache = ttft.copy_cache(saved)
    first = next(m.run(tokens[:, P:], cache, 0))
    full = model.make_cache()
    logits = prefill(model, tokens, full, 7)
    assert first.tolist() == sample(logits).tolist()
    for c, f in zip(cache, full):
        # mlx-lm's generate_step computes the next token before it yields one: its cache holds one position more
        assert c.offset == f.offset + (mode == "mlx-lm") and f.offset == 40
        for a, b in zip(c.keys_and_values(), f.keys_and_values()):
            assert mx.allclose(a[..., :40, :], b, atol=1e-5, rtol=1e-5)
    after = [a for c in saved for a in c.keys_and_values()]
    assert all(c.offset == P for c in saved) and all(mx.array_equal(a, b) for a, b in zip(before, after))


def test_prefix_cache_rows(capsys):
    recs, _ = bench_json(capsys, "micro", "-p", "24,40", "-r", "2", "--prefix-cache", "16", "--compare-mlx-lm")
    rows = {(r["mode"], r["prompt_tokens"], r["cached_tokens"]): r for r in recs}
    assert set(rows) == {(m, T, P) for m in ("base", "mlx-lm") for T in (24, 40) for P in (0, 16)}
    args = lm.preset_args("micro", 4096)
    for (mode, T, P), r in rows.items():
        assert r["gflop"] == pytest.approx(flops.forward(args, T - P, P) / 1e9)
        assert r["prompt_tps"] == pytest.approx((T - P) / (r["ttft_ms"] / 1e3))
        if P:
            assert r["ttft_reduction_vs_uncached"] == pytest.approx(rows[(mode, T, 0)]["ttft_ms"] / r["ttft_ms"])
        else:
            assert r["ttft_reduction_vs_uncached"] is None


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
    fused_runs = kernels.available(model.layers, mx.float32)
    assert fused_runs == ttft.platform.compiler_available()
    for fused in (True, False) if fused_runs else (False,):
        for step in (1, 7, 15, 16, 44, 45, 1000):  # 15 and 45 divide the prompt: its last chunk is whole
            cache = model.make_cache()
            with kernels_on(fused):
                logits = prefill(model, tokens, cache, step)
            assert mx.allclose(logits, full, atol=1e-4, rtol=1e-4), (fused, step)
            assert mx.allclose(logits, reference, atol=1e-4, rtol=1e-4), (fused, step)
            for c, f in zip(cache, full_cache):
                assert c.offset == f.offset == 45
                for a, b in zip(c.keys_and_values(), f.keys_and_values()):
                    assert mx.allclose(a, b, atol=1e-4, rtol=1e-4), (fused, step)
    if not fused_runs:
        pytest.skip("no C++ compiler: the fused kernels are not used here; only the plain path was checked")


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


def test_the_default_prefill_step_follows_the_prompt_length(monkeypatch):
    """On the CPU with MLX's attention ops: chunks of 256 up to LONG_PROMPT_CPU's 1,024 tokens, of 128 above; with
    the native attention, 2048 as on a GPU (generate.py's docstring has the measurements); a step given is kept.
    The chunks a fill receives show which ran."""
    if mx.default_device().type != mx.DeviceType.cpu:
        pytest.skip("the length rule is the CPU's; a GPU takes 2048")
    from mlxsuite.generate import LONG_PROMPT_CPU
    from mlxsuite.models import native_attention

    model = lm.build(lm.preset_args("micro", 64), seed=0)
    cases = [(4097, None, 2048, True)] if native_attention.available() else []
    cases += [(1024, None, 256, False), (1025, None, LONG_PROMPT_CPU[1], False), (1025, 300, 300, False)]
    for length, given, want, native in cases:
        monkeypatch.setattr(native_attention, "available", lambda native=native: native)
        widths, cache = [], model.make_cache()

        def fill(chunk, widths=widths, cache=cache):
            widths.append(chunk.shape[1])
            model(chunk, cache)
            return [c.state for c in cache]

        prefill(model, mx.zeros((1, length), dtype=mx.int32), cache, given, fill)
        assert set(widths[:-1]) == {want} and widths[-1] <= want, (length, given)


def test_the_report_states_the_prefill_step_of_each_length():
    from mlxsuite.bench.results import prefill_steps

    rows = [
        {"prefill_step": 256, "prompt_tokens": 128, "cached_tokens": 0},
        {"prefill_step": 256, "prompt_tokens": 1024, "cached_tokens": 0},
        {"prefill_step": 128, "prompt_tokens": 2048, "cached_tokens": 0},
        {"prefill_step": 256, "prompt_tokens": 1536, "cached_tokens": 1024},  # 512 tokens prefilled
    ]
    assert prefill_steps(rows) == "256 at 128/512/1024 tokens, 128 at 2048 tokens"
    assert prefill_steps(rows[:2]) == "256"

"""`bench ttft -o table|md|csv|json|jsonl`: flat records that every format carries whole; CSV and JSONL read back to
the same records as JSON. One small measured run (micro, two repetitions) feeds the formats; no timing assertions."""

import json

import pytest
from conftest import run_cli

import mlxsuite  # noqa: F401  (loads the fast BLAS before mlx.core)
from mlxsuite.bench import report as ttft_report
from mlxsuite.bench import ttft
from mlxsuite.models import lm


@pytest.fixture(autouse=True)
def quick_roofline(monkeypatch):
    monkeypatch.setattr(ttft, "GEMM_N", 128)


class Tok:
    def decode(self, ids):
        return " ".join(map(str, ids))

    def encode(self, text):
        return text.split()


@pytest.fixture(scope="module")
def report():
    """A run with most fields filled: two models, mlx-lm beside the base, decode speed, a prefix cache, batch 2."""
    ttft.GEMM_N, n = 128, ttft.GEMM_N
    try:
        setups = [
            ttft.Setup(lm.build(lm.preset_args("micro", 64), seed=s), 8, name=name, tokenizer=Tok())
            for s, name in ((0, "a"), (1, "b"))
        ]
        return ttft.run(setups, ["base", "mlx-lm"], [(12, 1), (12, 2)], reps=2, warmup=1, decode=2, cached=4)
    finally:
        ttft.GEMM_N = n


def test_records_are_flat_and_complete(report):
    recs = ttft_report.records(report)
    # per model: batch 1 (base, mlx-lm) and batch 2 (base), each uncached and cached
    assert len(recs) == len(report["results"]) == 2 * (4 + 2)
    for r in recs:
        assert list(r) == list(ttft_report.FIELDS)
        for k, v in r.items():
            kind = ttft_report.FIELDS[k]
            assert v is None or isinstance(v, kind) or (kind is float and isinstance(v, int)), (k, v)
    batch1 = [r for r in recs if r["batch"] == 1]
    assert all(r["decode_tps"] > 0 and len(r["decode_tps_samples"]) == 2 for r in batch1)
    assert all(r["decode_tps"] is None for r in recs if r["batch"] == 2)
    assert all(r["tokenize_tokens"] == 12 * r["batch"] for r in recs)
    assert {r["cached_tokens"] for r in recs} == {0, 4}
    assert any(r["speedup_vs_mlx_lm"] for r in recs) and any(r["ttft_reduction_vs_uncached"] for r in recs)


def test_csv_jsonl_and_json_read_back_the_same_records(report):
    recs = ttft_report.records(report)
    assert json.loads(ttft_report.to_json(recs)) == recs
    assert ttft_report.read_jsonl(ttft_report.to_jsonl(recs)) == recs
    assert ttft_report.read_csv(ttft_report.to_csv(recs)) == recs
    assert len(ttft_report.to_jsonl(recs).splitlines()) == len(recs)
    assert len(ttft_report.to_csv(recs).splitlines()) == 1 + len(recs)


def test_markdown_shows_the_records_and_the_run(report):
    recs = ttft_report.records(report)
    md = ttft_report.to_markdown(recs, report)
    lines = md.splitlines()
    header = [h.strip() for h in lines[0].strip("|").split("|")]
    assert header[:7] == ["model", "size", "type", "mode", "tokens", "cached", "batch"] and "TTFT ms" in header
    assert "decode tok/s" in header and "vs uncached" in header and "vs mlx-lm" in header
    assert set(lines[1].strip("|").split("|")) == {":---", "---:"}
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2 : 2 + len(recs)]]
    for r, row in zip(recs, rows):
        cell = dict(zip(header, row))
        assert (cell["model"], cell["mode"], int(cell["tokens"]), int(cell["batch"])) == (
            r["model"],
            r["mode"],
            r["prompt_tokens"],
            r["batch"],
        )
        assert float(cell["TTFT ms"].replace(",", "")) == pytest.approx(r["ttft_ms"], rel=0.01, abs=0.01)
    assert lines[2 + len(recs)] == ""
    footer = "\n".join(lines[3 + len(recs) :])
    assert len([line for line in footer.splitlines() if line]) <= 3  # two or three lines under the table
    for text in (
        f"MLX {report['mlx_version']}",
        f"mlx-lm {report['mlx_lm_version']}",
        report["chip"],
        report["timestamp"],
        "untimed pass",
        "rotated",
        "roofline peak",
    ):
        assert text in footer
    wide = ttft_report.to_markdown(recs, report, wide=True)
    assert "std ms" in wide.splitlines()[0] and "std ms" not in lines[0]


@pytest.mark.parametrize("fmt", ["json", "jsonl", "csv"])
def test_cli_formats_parse_to_records(capsys, fmt):
    code, stdout, stderr = run_cli(capsys, "bench", "ttft", "micro", "-p", "8,16", "-r", "2", "-o", fmt)
    assert code == 0, stderr
    recs = {"json": json.loads, "jsonl": ttft_report.read_jsonl, "csv": ttft_report.read_csv}[fmt](stdout)
    assert [(r["model"], r["mode"], r["prompt_tokens"], r["batch"]) for r in recs] == [
        ("micro", "base", 8, 1),
        ("micro", "base", 16, 1),
    ]
    assert all(list(r) == list(ttft_report.FIELDS) and len(r["ttft_ms_samples"]) == 2 for r in recs)


def test_cli_markdown_prints_a_table_and_its_metadata(capsys):
    code, stdout, stderr = run_cli(capsys, "bench", "ttft", "micro", "-p", "8", "-r", "1", "-o", "md")
    assert code == 0, stderr
    lines = stdout.splitlines()
    assert lines[0] == "Time to first token: preset micro, random weights, V=4096" and lines[1] == ""
    assert lines[2].startswith("| size | type | mode | tokens | batch | TTFT ms |")
    assert lines[4].startswith("| ") and " MB | f32 | base | 8 | 1 |" in lines[4]
    assert "mlxsuite " in lines[6] and "Median of 1 timed round" in lines[8] and len(lines) <= 11


def test_roofline_never_exceeds_one_and_a_wide_spread_is_flagged(report):
    """A prefill faster than the GEMM probe (the probe saw more load) raises the peak instead of showing > 100 %."""
    import copy

    fast = copy.deepcopy(report)
    fast["results"][0]["gflops_per_s"] = 3 * fast["gemm_gflops_best"]
    recs = ttft_report.records(fast)
    assert max(r["roofline"] for r in recs) == pytest.approx(1.0)
    assert all(r["roofline"] == pytest.approx(r["gflops_per_s"] / r["gemm_gflops"]) for r in recs)
    assert recs[0]["gemm_gflops"] == pytest.approx(3 * fast["gemm_gflops_best"])
    quiet = [dict(r, ttft_ms_p10=10.0, ttft_ms_p90=11.0) for r in recs]
    assert ttft_report.spread_warnings(quiet) == []
    noisy = [dict(quiet[0], ttft_ms_p90=25.0, load_avg_start=3.5, load_avg_end=4.0)] + quiet[1:]
    (warning,) = ttft_report.spread_warnings(noisy)
    assert "2.5×" in warning and "load average 3.50 → 4.00" in warning

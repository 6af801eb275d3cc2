"""What `mlxsuite bench ttft` prints: one flat record per (model, mode, prompt tokens, cached tokens, batch) with
every statistic and the run's metadata, and its formats (markdown, CSV, JSON, JSONL, the plot) in the manner of
llama-bench's `-o md|csv|json|jsonl`. Times in ms, memory in GB (10^9 bytes, as mlx-lm prints it). CSV cells hold
lists as JSON and leave missing values empty; `read_csv` and `read_jsonl` give back the records `records` made.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from mlxsuite.platform.plots import check_path, pyplot, save

# Every record field and its type, in column order: the row's identity, its statistics, the model, the run.
FIELDS: dict[str, type] = {
    "model": str,
    "mode": str,
    "prompt_tokens": int,
    "cached_tokens": int,
    "batch": int,
    "ttft_ms": float,
    "ttft_ms_p10": float,
    "ttft_ms_p90": float,
    "ttft_ms_mean": float,
    "ttft_ms_std": float,
    "ttft_ms_samples": list,
    "prompt_tps": float,
    "decode_tokens": int,
    "decode_tps": float,
    "decode_tps_p10": float,
    "decode_tps_p90": float,
    "decode_tps_samples": list,
    "gflop": float,
    "gflops_per_s": float,
    "roofline": float,
    "peak_memory_gb": float,
    "ttft_reduction_vs_base": float,
    "ttft_reduction_vs_base_paired": float,
    "flops_reduction_vs_base": float,
    "ttft_over_flops_reduction": float,
    "decode_vs_base": float,
    "ttft_reduction_vs_uncached": float,
    "speedup_vs_mlx_lm": float,
    "speedup_vs_mlx_lm_paired": float,
    **dict.fromkeys(
        ("decode_vs_mlx_lm", "speedup_vs_llama_cpp", "speedup_vs_llama_cpp_paired", "decode_vs_llama_cpp"), float
    ),
    "tokenize_ms": float,
    "tokenize_tokens": int,
    "params": int,
    "nonvocab_params": int,
    "size_gb": float,
    "type": str,
    "layers": int,
    "aux_layers": int,
    "kvp_param_ratio": float,
    "implementation": str,  # the model class that ran: this project's family, or mlx-lm's own class
    "mlxsuite_version": str,
    "mlx_version": str,
    "mlx_lm_version": str,
    "device": str,
    "chip": str,
    "memory_gb": float,
    "os": str,
    "os_version": str,
    "kernel": str,
    "python": str,
    "cpu_count": int,
    "blas": str,
    "blas_threads": int,
    "dtype": str,
    "prefill_step": int,
    "fused_prefill": bool,
    "gemm_gflops": float,
    "gemm_dtype": str,
    **{f"llama_cpp_{k}": t for k, t in (("version", str), ("threads", int), ("batch", int), ("gguf", str))},
    "gemm_n": int,
    "reps": int,
    "warmup": int,
    "order": str,
    "seed": int,
    "load_avg_start": float,
    "load_avg_end": float,
    "timestamp": str,
}
RUN_FIELDS = (
    "mlxsuite_version",
    "mlx_version",
    "mlx_lm_version",
    "device",
    "chip",
    "memory_gb",
    "os",
    "os_version",
    "kernel",
    "python",
    "cpu_count",
    "blas",
    "blas_threads",
    "dtype",
    "fused_prefill",
    "gemm_gflops",
    "gemm_dtype",
    "gemm_n",
    "reps",
    "warmup",
    "seed",
    "timestamp",
)


def records(report: dict) -> list[dict]:
    """The report of `ttft.run` as flat records, every field of FIELDS in each (None where it does not apply)."""
    run = {k: None if report.get(k) == "" else report.get(k) for k in RUN_FIELDS}  # "" would read back as None
    run["order"] = "rotating"
    load = report.get("load_average") or {}
    run["load_avg_start"], run["load_avg_end"] = load.get("start"), load.get("end")
    models = {m["name"]: m for m in report.get("models", [])}
    run["gemm_gflops"] = peak = roofline_peak(report)
    out = []
    for r in report["results"]:
        t, d, m = r["ttft_s"], r.get("decode_tps"), models.get(r["model"], {})
        kvp = m.get("kvp")
        llama = (report.get("mode_info") or {}).get(r["model"], {}).get("llama.cpp", {})
        rec = {
            "model": r["model"],
            "mode": r["mode"],
            "prompt_tokens": r["prompt_tokens"],
            "cached_tokens": r.get("cached_tokens", 0),
            "batch": r["batch"],
            "ttft_ms": 1e3 * t["median"],
            "ttft_ms_p10": 1e3 * t["p10"],
            "ttft_ms_p90": 1e3 * t["p90"],
            "ttft_ms_mean": 1e3 * t["mean"],
            "ttft_ms_std": None if t["std"] is None else 1e3 * t["std"],
            "ttft_ms_samples": [1e3 * s for s in t["samples"]],
            "prompt_tps": r["prompt_tps"],
            "decode_tokens": r.get("decode_tokens", 0),
            "decode_tps": d and d["median"],
            "decode_tps_p10": d and d["p10"],
            "decode_tps_p90": d and d["p90"],
            "decode_tps_samples": d and d["samples"],
            "gflop": r["flops"] / 1e9,
            "gflops_per_s": r["gflops_per_s"],
            "roofline": r["gflops_per_s"] / peak,
            "peak_memory_gb": None if r["peak_memory_bytes"] is None else r["peak_memory_bytes"] / 1e9,
            "tokenize_ms": 1e3 * r["tokenize_s"]["median"] if "tokenize_s" in r else None,
            "params": m.get("params"),
            "nonvocab_params": m.get("nonvocab_params"),
            "size_gb": m.get("size_gb"),
            "type": m.get("type"),
            "layers": m.get("layers"),
            "aux_layers": kvp["aux_layers"] if kvp and r["mode"] in ("aux", "kvp") else None,
            "kvp_param_ratio": kvp["param_ratio"] if kvp and r["mode"] in ("aux", "kvp") else None,
            "implementation": m.get("implementation"),
            **{f"llama_cpp_{k}": llama.get(k) for k in ("version", "threads", "batch", "gguf")},
            **run,
        }
        out.append({k: rec.get(k, r.get(k)) for k in FIELDS})
    return out


def roofline_peak(report: dict) -> float:
    """The rate the roofline column divides by: the best GEMM probe between rounds, or the best rate a prefill
    reached when one ran faster (the probe then saw more load or fewer threads), so that no row exceeds 100 %."""
    probe = report.get("gemm_gflops_best") or report["gemm_gflops"]
    return max([probe] + [r["gflops_per_s"] for r in report["results"]])


SPREAD_WARN = 1.5  # p90/p10 of a configuration's TTFT above which the numbers are flagged as noisy


def spread_warnings(recs: list[dict]) -> list[str]:
    """One line when some configuration's TTFT spread (p90/p10) exceeds SPREAD_WARN, naming the load average."""
    wide = [r for r in recs if r["ttft_ms_p10"] and r["ttft_ms_p90"] / r["ttft_ms_p10"] > SPREAD_WARN]
    if not wide:
        return []
    worst = max(wide, key=lambda r: r["ttft_ms_p90"] / r["ttft_ms_p10"])
    load = recs[0].get("load_avg_start"), recs[0].get("load_avg_end")
    named = f"load average {load[0]:.2f} → {load[1]:.2f} on {recs[0]['cpu_count']} cores" if None not in load else ""
    return [
        f"TTFT spread p90/p10 above {SPREAD_WARN}× in {len(wide)} of {len(recs)} rows (worst "
        f"{worst['ttft_ms_p90'] / worst['ttft_ms_p10']:.1f}×: {worst['mode']} {worst['prompt_tokens']} tokens); "
        + (named + ": " if named else "")
        + "other processes share the machine, compare medians with care or rerun on a quiet one"
    ]


# ---- text formats ---------------------------------------------------------------------------------------------


def to_json(recs: list[dict]) -> str:
    return json.dumps(recs, indent=2)


def to_jsonl(recs: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in recs)


def to_csv(recs: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(FIELDS)
    for r in recs:
        w.writerow([_csv_cell(r[k]) for k in FIELDS])
    return buf.getvalue()


def _csv_cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, dict)):
        return json.dumps(v)
    return repr(v) if isinstance(v, float) else str(v)


def read_jsonl(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def read_csv(text: str) -> list[dict]:
    """Records back from `to_csv`'s text, with their types."""
    rows = list(csv.reader(io.StringIO(text)))
    header, out = rows[0], []
    for row in rows[1:]:
        out.append({k: _parse(FIELDS.get(k, str), v) for k, v in zip(header, row)})
    return out


def _parse(kind: type, text: str) -> Any:
    if text == "":
        return None
    if kind is bool:
        return text == "true"
    if kind is list:
        return json.loads(text)
    return kind(text)


# ---- tables (rich and markdown): the columns -----------------------------------------------------------------


@dataclass
class Column:
    header: str
    cell: Callable[[dict], str]
    applies: Callable[[list[dict]], bool] = lambda recs: True
    wide: bool = False  # shown with --wide only (every field is in csv/json/jsonl)
    priority: int = 0  # the default table drops the lowest first until it fits its width


def _num(fmt: str, key: str, suffix: str = "") -> Callable[[dict], str]:
    return lambda r: "" if r[key] is None else f"{r[key]:{fmt}}{suffix}"


def _ms(key: str) -> Callable[[dict], str]:
    return lambda r: (
        ""
        if r[key] is None
        else (f"{r[key]:,.2f}" if r[key] < 10 else f"{r[key]:,.1f}" if r[key] < 1000 else f"{r[key]:,.0f}")
    )


def _size(gb: Optional[float]) -> str:
    """llama-bench's size cell: GB from 1 GB up, else MB (10^6 bytes)."""
    return "" if gb is None else f"{gb:.2f} GB" if gb >= 1 else f"{gb * 1e3:.1f} MB"


def _any(key: str) -> Callable[[list[dict]], bool]:
    return lambda recs: any(r[key] is not None for r in recs)


def _several(key: str) -> Callable[[list[dict]], bool]:
    return lambda recs: len({r[key] for r in recs}) > 1


def _beside_base(recs: list[dict]) -> bool:
    return any(r["ttft_reduction_vs_base"] is not None and r["mode"] not in ("base", *RUNTIMES) for r in recs)


COLUMNS = [
    Column("model", lambda r: r["model"], _several("model"), priority=9),
    Column("size", lambda r: _size(r["size_gb"]), _any("size_gb"), priority=4),
    Column("type", lambda r: r["type"] or "", _any("type"), priority=4),
    Column("mode", lambda r: r["mode"], priority=9),
    Column("tokens", _num("d", "prompt_tokens"), priority=9),
    Column("cached", _num("d", "cached_tokens"), lambda recs: any(r["cached_tokens"] for r in recs), priority=9),
    Column("batch", _num("d", "batch"), priority=8),
    Column("TTFT ms", _ms("ttft_ms"), priority=9),
    Column("p10–p90", lambda r: f"{_ms('ttft_ms_p10')(r)}–{_ms('ttft_ms_p90')(r)}", priority=5),
    Column("mean ms", _ms("ttft_ms_mean"), wide=True),
    Column("std ms", _ms("ttft_ms_std"), wide=True),
    Column("tok/s", _num(",.0f", "prompt_tps"), priority=7),
    Column("decode tok/s", _num(",.1f", "decode_tps"), _any("decode_tps"), priority=8),
    Column("GFLOP", _num(",.3f", "gflop"), wide=True),
    Column("GFLOP/s", _num(",.1f", "gflops_per_s"), wide=True),
    Column("roofline", _num(".0%", "roofline"), priority=3),
    Column("peak GB", _num(",.3f", "peak_memory_gb"), priority=2),
    Column("TTFT red.", _num(".2f", "ttft_reduction_vs_base", suffix="×"), _beside_base, priority=7),
    Column("FLOPs red.", _num(".2f", "flops_reduction_vs_base", suffix="×"), _beside_base, priority=6),
    Column("TTFT/FLOPs", _num(".2f", "ttft_over_flops_reduction"), _beside_base, wide=True),
    Column(
        "decode vs base",
        _num(".2f", "decode_vs_base", suffix="×"),
        lambda recs: _beside_base(recs) and _any("decode_vs_base")(recs),
        priority=5,
    ),
    Column(
        "vs uncached",
        _num(".2f", "ttft_reduction_vs_uncached", suffix="×"),
        _any("ttft_reduction_vs_uncached"),
        priority=7,
    ),
    Column("vs mlx-lm", _num(".2f", "speedup_vs_mlx_lm", suffix="×"), _any("speedup_vs_mlx_lm"), priority=6),
    Column("decode vs mlx-lm", _num(".2f", "decode_vs_mlx_lm", suffix="×"), _any("decode_vs_mlx_lm"), priority=4),
    Column("vs llama.cpp", _num(".2f", "speedup_vs_llama_cpp", suffix="×"), _any("speedup_vs_llama_cpp"), priority=6),
    Column("decode vs llama.cpp", _num(".2f", "decode_vs_llama_cpp", "×"), _any("decode_vs_llama_cpp"), priority=4),
    Column("tokenize ms", _ms("tokenize_ms"), _any("tokenize_ms"), wide=True),
]
LEGEND = {
    "TTFT ms": "median of the timed runs",
    "tok/s": "new prompt tokens × batch / median TTFT",
    "decode tok/s": "tokens/s of the tokens decoded after the first (median over runs)",
    "roofline": "GFLOP/s / the best GEMM probe between rounds (or the best prefill rate, if higher)",
    "peak GB": "peak memory during a run (10^9 bytes)",
    "TTFT red.": "base median TTFT / this mode's",
    "FLOPs red.": "base FLOPs / this mode's",
    "TTFT/FLOPs": "their ratio (1: time saved in proportion to FLOPs)",
    "decode vs base": "decode tok/s / the base's",
    "vs uncached": "the uncached prompt's median TTFT / this one (its first tokens in a prompt cache)",
    "vs mlx-lm": "mlx-lm's median TTFT / this mode's (> 1: faster)",
    "vs llama.cpp": "llama.cpp's median TTFT / this mode's (> 1: faster)",
    **{f"decode vs {x}": f"decode tok/s / {x}'s (median of per-round ratios)" for x in ("mlx-lm", "llama.cpp")},
}


def columns(recs: list[dict], wide: bool = False) -> list[Column]:
    return [c for c in COLUMNS if (wide or not c.wide) and c.applies(recs)]


def to_markdown(recs: list[dict], report: dict, wide: bool = False, cols: Optional[list[Column]] = None) -> str:
    """A GitHub table of the records (the default columns, or all with `wide`), then the run's metadata."""
    cols = cols or columns(recs, wide)
    title = [f"Time to first token: {'; '.join(report['described'])}", ""] if report.get("described") else []
    lines = title + [
        "| " + " | ".join(c.header for c in cols) + " |",
        "|" + "|".join(":---" if c.header in ("model", "mode") else "---:" for c in cols) + "|",
    ]
    lines += ["| " + " | ".join(c.cell(r) for c in cols) + " |" for r in recs]
    return "\n".join(lines) + "\n\n" + "\n\n".join(footer(report, cols)) + "\n"


def footer(report: dict, cols: list[Column]) -> list[str]:
    """The run in two or three lines: versions, machine and settings; schedule, roofline and load; the meaning of
    the ratio columns shown (the full schedule text is in the report's `schedule`)."""
    load = report.get("load_average") or {}
    mem = f", {report['memory_gb']:.1f} GB" if report.get("memory_gb") else ""
    threads = f" ({_plural(report['blas_threads'], 'thread')})" if report.get("blas_threads") else ""
    machine = (
        f"mlxsuite {report['mlxsuite_version']}, MLX {report['mlx_version']}, mlx-lm {report['mlx_lm_version']}; "
        f"{report['device']}: {report['chip']}{mem}, {report['cpu_count']} cores; "
        + f"{report['os']} {report['os_version']}".strip()
        + f", Python {report['python']}; {report['dtype']}, BLAS {report['blas']}{threads}, prefill step "
        + str(report.get("prefill_steps") or report["prefill_step"])
        + (" (fused CPU prefill)" if report.get("fused_prefill") else "")
        + "."
        + "".join(  # how modes that state their settings ran (llama.cpp: threads, batch, file)
            f" {mode} ({model}): {info['summary']}."
            for model, modes in (report.get("mode_info") or {}).items()
            for mode, info in modes.items()
            if "summary" in info
        )
    )
    run = (
        f"Median of {_plural(report['reps'], 'timed round')} after {report['warmup']} untimed pass(es), "
        f"configurations rotated, modes ABBA; roofline peak {roofline_peak(report):.1f} GFLOP/s "
        f"{report['gemm_dtype']} (GEMM n={report['gemm_n']})"
        + (f"; load average {load['start']:.2f} → {load['end']:.2f}" if load.get("start") is not None else "")
        + (f"; decode: {report['decode_tokens']} tokens after the first" if report.get("decode_tokens") else "")
        + f"; {report['timestamp']}."
    )
    legend = [f"{c.header}: {LEGEND[c.header]}" for c in cols if c.header in LEGEND and c.header in RATIOS]
    if "kvp" in report:
        k = report["kvp"]
        legend.append(
            f"KV Prediction: {k['aux_layers']} of {k['base_layers']} layers in the auxiliary, "
            f"parameter ratio {k['param_ratio']:.2f}×"
        )
    return [machine, run] + (["; ".join(legend) + "."] if legend else [])


RATIOS = ("TTFT red.", "FLOPs red.", "TTFT/FLOPs", "decode vs base", "vs uncached", "vs mlx-lm", "decode vs mlx-lm")
RATIOS += ("vs llama.cpp", "decode vs llama.cpp")
RUNTIMES = ("mlx-lm", "llama.cpp")  # their ratio columns replace the reductions vs the base


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


# ---- plot ---------------------------------------------------------------------------------------------------


def check_plot_path(path: Path) -> None:
    """Fail before measuring: matplotlib missing, not a .png, or a folder that does not exist."""
    check_path(path)


def plot(recs: list[dict], path: Path) -> None:
    """TTFT (median, p10-p90 band) against prompt length, one line per model, mode, cached tokens and batch;
    written atomically."""
    plt = pyplot()
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(7, 4.5))
    series: dict[tuple, list[dict]] = {}
    for r in recs:
        series.setdefault((r["model"], r["mode"], r["cached_tokens"], r["batch"]), []).append(r)
    several = len({r["model"] for r in recs}) > 1
    for (model, mode, cached, batch), rows in series.items():
        rows = sorted(rows, key=lambda r: r["prompt_tokens"])
        label = (f"{model} " if several else "") + f"{mode}, batch {batch}" + (f", {cached} cached" if cached else "")
        (line,) = ax.plot([r["prompt_tokens"] for r in rows], [r["ttft_ms"] for r in rows], marker="o", label=label)
        ax.fill_between(
            [r["prompt_tokens"] for r in rows],
            [r["ttft_ms_p10"] for r in rows],
            [r["ttft_ms_p90"] for r in rows],
            color=line.get_color(),
            alpha=0.2,
        )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(sorted({r["prompt_tokens"] for r in recs}))
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("prompt tokens")
    ax.set_ylabel("time to first token (ms)")
    ax.set_title(f"TTFT on {recs[0]['device']} ({recs[0]['dtype']}), median and p10-p90")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save(fig, path)

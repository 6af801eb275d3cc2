"""`mlxsuite vocab sweep`: the fits on synthetic runs, and a tiny real sweep end to end with interruption + resume."""

import json
import math
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest

from mlxsuite.platform.errors import UserError
from mlxsuite.vocab import scaling
from mlxsuite.vocab import sweep as sw

# ---- analysis on synthetic data (numpy only, instant) -------------------------------------------------------------


def test_parabola_optimum_interior_edges_and_two_points():
    v = [512, 1024, 2048, 4096]
    lu = [(math.log(x) - math.log(1300)) ** 2 for x in v]
    opt = sw.parabola_optimum(v, lu)
    assert opt["flag"] == "interior" and opt["vocab"] == pytest.approx(1300, rel=1e-6)
    assert opt["measured_best_vocab"] == 1024 and opt["points"] == 4
    falling = sw.parabola_optimum(v, [(math.log(x) - math.log(9000)) ** 2 for x in v])
    assert falling["flag"] == "high-edge" and falling["vocab"] == pytest.approx(4096)
    rising = sw.parabola_optimum(v, [(math.log(x) - math.log(100)) ** 2 for x in v])
    assert rising["flag"] == "low-edge" and rising["vocab"] == pytest.approx(512)
    two = sw.parabola_optimum([512, 1024], [1.0, 0.5])
    assert two["flag"] == "two-points" and two["vocab"] == 1024
    concave = sw.parabola_optimum(v, [0.0, 1.0, 1.0, 0.5])
    assert concave["flag"].startswith("not-convex") and concave["vocab"] == 512


def test_parabola_is_fitted_around_the_measured_best():
    """L_u rises faster above the optimum than below: a far point on the flat side must not move the vertex."""
    v = [128, 205, 328, 524, 839]
    lu = [(math.log(x) - math.log(170)) ** 2 for x in v]
    lu[-1] = 0.5 * lu[-1]  # the far tail flattens
    opt = sw.parabola_optimum(v, lu)
    assert opt["flag"] == "interior" and opt["vocab"] == pytest.approx(170, rel=1e-6)
    assert opt["window"] == [128, 524]
    everywhere = sw.parabola_optimum(v, lu, neighbours=len(v))
    assert abs(everywhere["vocab"] / 170 - 1) > 0.1 and everywhere["window"] == [128, 839]


def _synthetic_rows():
    """Runs whose L_u follows a known parametric loss, on a 3-budget × 2-size × 4-vocabulary grid."""
    truth = scaling.ParametricLoss(A1=0.5, A2=0.3, B=2.0, E=3.0, alpha1=0.4, alpha2=0.6, beta=0.4)
    rows = []
    for c in (1e12, 1e13, 1e14):
        for preset, nnv, d in (("a", 1e5, 64), ("b", 8e5, 128)):
            for v in (512, 1024, 2048, 4096):
                nv = v * d
                tokens = c / (6 * (nnv + nv))
                rows.append(
                    {
                        "preset": preset,
                        "vocab": v,
                        "budget": c,
                        "d": d,
                        "nnv": nnv,
                        "nv": nv,
                        "tokens": tokens,
                        "lu": float(truth(nnv, nv, tokens)),
                        "characters": tokens / 0.3,
                        "bpc": 3 + float(truth(nnv, nv, tokens)) - 0.1 * math.log(v),
                    }
                )
    return truth, rows


def test_analyze_recovers_parametric_loss_and_reports_fits():
    truth, rows = _synthetic_rows()
    a = sw.analyze(rows, {512: 0.4, 1024: 0.35, 2048: 0.32, 4096: 0.3}, replicates=0)
    a3 = a["fits"]["parametric"]
    assert a3["points"] == 24
    assert a3["alpha2"] == pytest.approx(truth.alpha2, abs=0.02)
    assert a3["beta"] == pytest.approx(truth.beta, abs=0.02)
    assert a3["rmse"] < 1e-3
    assert len(a["optimal_vocab"]) == 3 and len(a["per_model"]) == 6
    a1 = a["fits"]["isoflops"]
    assert len(a1["selected"]) == 3 and set(a1["laws"]) == {"nnv", "nv", "characters"}
    assert [v["budget"] for v in a1["vocab"]] == [1e12, 1e13, 1e14]
    assert a1["laws"]["nnv"]["exponent"] == 0.5 and a1["laws"]["characters"]["exponent"] == 0.5
    # with this loss the optimal N_v grows with compute at fixed size, as in the paper
    for p in ("a", "b"):
        ms = [m for m in a["per_model"] if m["preset"] == p]
        vs = [m["vocab"] for m in ms]
        assert vs == sorted(vs)
    # the same parabola on bits per character, reported next to L_u's
    assert all(m["by_bpc"]["flag"] for m in a["per_model"]) and all(o["by_bpc"] for o in a["optimal_vocab"])
    json.dumps(a)  # JSON-serializable as is


def test_plan_rejects_budgets_too_small_and_bad_grids():
    settings = sw.SweepSettings(seq_len=32, batch_size=4)
    with pytest.raises(UserError, match="buys only"):
        sw.plan_runs(sw.SweepGrid([1e6], ["micro"], [512]), settings)
    with pytest.raises(UserError, match="unknown preset"):
        sw.plan_runs(sw.SweepGrid([1e9], ["nope"], [512]), settings)
    with pytest.raises(UserError, match="too small"):
        sw.plan_runs(sw.SweepGrid([1e9], ["micro"], [100]), settings)
    plans = sw.plan_runs(sw.SweepGrid([3e9, 1.5e9], ["micro"], [512, 1024]), settings)
    assert [p.budget for p in plans] == [1.5e9, 1.5e9, 3e9, 3e9]
    for p in plans:
        assert p.flops == pytest.approx(p.budget, rel=0.1)  # whole steps
        assert p.tokens == p.steps * 128


def _interior_rows(plans, v_star, curvature=0.2):
    """L_u of every planned run on a synthetic surface: a parabola in ln V around V*(C), falling with C."""
    rows = []
    for p in plans:
        lu = -0.5 * math.log(p.budget / 1e10) + curvature * (math.log(p.vocab) - math.log(v_star(p.budget))) ** 2
        rows.append({**vars(p), "lu": lu})
    return rows


def test_default_grid_brackets_a_moving_optimum_within_the_time_budget():
    """The default grid (issue 24: >= 3 sizes spanning >= 8x in N_nv, >= 4 budgets, >= 5 vocabularies) must hold an
    optimum that moves as a micro sweep measured (V* ≈ 250 at 1e11, ∝ C^0.5) inside the grid at every budget, and
    the time model must keep it within the hour; --quick is smaller."""
    from mlxsuite.models.lm import preset_args

    grid, settings = sw.SweepGrid(), sw.SweepSettings()
    plans = sw.plan_runs(grid, settings)
    assert sw.estimate_seconds(plans) <= 0.95 * sw.TIME_BUDGET_S  # a little room for edge extensions
    nnv = sorted(preset_args(p, 1).n_nonvocab_params for p in grid.presets)
    assert len(nnv) >= 3 and nnv[-1] / nnv[0] >= 8
    assert len(grid.budgets) >= 4 and len(grid.vocab_sizes) >= 5
    assert min(p.steps for p in plans if p.preset == "micro") >= 50
    quick = sw.plan_runs(sw.SweepGrid(list(sw.QUICK_BUDGETS), list(grid.presets), list(sw.QUICK_VOCAB_SIZES)), settings)
    assert len(quick) < len(plans) / 2 and sw.estimate_seconds(quick) < sw.estimate_seconds(plans) / 2

    def v_star(c):
        return 250 * (c / 1e11) ** 0.5

    tpc = {v: 0.7 - 0.1 * math.log2(v / 128) for v in grid.vocab_sizes}
    a = sw.analyze(_interior_rows(plans, v_star), tpc, replicates=0)
    for o in a["optimal_vocab"]:
        assert o["flag"] == "interior", o
        assert o["vocab"] == pytest.approx(v_star(o["budget"]), rel=1e-6)
    assert a["measured"]["exponent"] == pytest.approx(0.5, abs=1e-6)
    a1 = a["fits"]["isoflops"]
    assert len(a1["selected"]) == len(grid.budgets)  # one envelope point per budget
    assert a1["laws"]["nv"]["exponent"] == pytest.approx(0.5, abs=1e-6)  # N_v = V*·d ∝ C^0.5
    assert a["vocab_grows_with_compute"] is True

    # a grid that stops short of the optimum is flagged, not silently clamped
    narrow = [p for p in plans if p.vocab <= 328]
    a = sw.analyze(_interior_rows(narrow, lambda c: 2 * v_star(c)), tpc, replicates=0)
    assert a["optimal_vocab"][-1]["flag"] == "high-edge" and a["optimal_vocab"][-1]["vocab"] == 328


def test_optimal_vocab_against_nnv_at_fixed_budget_and_its_bootstrap_spread():
    """Issue 24: runs whose optimum is V* = 250·(C/1e11)^0.4·(N_nv/1e5)^0.3 on the default grid (3 sizes): the fit
    across sizes at each budget reads 0.3 (N_v = V·d: 0.3 + the slope of ln d on ln N_nv), the bootstrap over runs
    brackets it, and every cell is bracketed by the grid; with noise the spread widens but still holds the truth."""
    from mlxsuite.vocab.sweep import analysis

    grid, settings = sw.SweepGrid(budgets=[3.5e10, 5e10, 7e10, 1e11]), sw.SweepSettings()
    grid.vocab_sizes = [128, 181, 256, 362, 512, 724, 1024]
    plans = sw.plan_runs(grid, settings)
    nnv = {p.preset: p.nnv for p in plans}

    def rows_with(noise: float) -> list[dict]:
        rng = np.random.default_rng(1)
        rows = []
        for p in plans:
            v_star = 250 * (p.budget / 1e11) ** 0.4 * (p.nnv / 1e5) ** 0.3
            lu = -0.5 * math.log(p.budget / 1e10) + 0.2 * (math.log(p.vocab) - math.log(v_star)) ** 2
            rows.append({**vars(p), "lu": lu + noise * rng.standard_normal()})
        return rows

    tpc = {v: 0.7 - 0.1 * math.log2(v / 128) for v in grid.vocab_sizes}
    a = sw.analyze(rows_with(0.0), tpc, replicates=30)
    across = a["vocab_vs_nnv"]
    assert across["sizes"] == 3 and across["vocab_exponent"] == pytest.approx(0.3, abs=1e-6)
    d = {p.preset: p.d for p in plans}
    sizes = sorted(nnv, key=nnv.get)
    slope_d = np.polyfit(np.log([nnv[k] for k in sizes]), np.log([d[k] for k in sizes]), 1)[0]
    assert across["nv_exponent"] == pytest.approx(0.3 + slope_d, abs=1e-6)
    assert all(e["grows"] and e["vocab_exponent"] == pytest.approx(0.3, abs=1e-6) for e in across["per_budget"])
    assert all(m["bracketed"] for m in a["per_model"])
    assert across["paper_nv_exponent_at_fixed_c"] > 0 and across["paper_gamma_compute_optimal"] == pytest.approx(
        0.833, abs=1e-3
    )
    spread = a["spread"]["vocab_vs_nnv_exponent"]
    assert spread["low"] <= 0.3 + 1e-9 and spread["high"] >= 0.3 - 1e-9 and spread["replicates"] == 30
    for p in ("micro", "mini", "midi"):
        assert a["spread"][f"vocab_vs_c_{p}_exponent"]["median"] == pytest.approx(0.4, abs=0.02)
    assert {"a1_nv_exponent", "a1_free_nnv_exponent", "a1_free_characters_exponent"} <= set(a["spread"])
    assert a["fits"]["isoflops_free"]["free_exponents"] is True and a["fits"]["isoflops"]["free_exponents"] is False

    noisy = sw.analyze(rows_with(0.01), tpc, replicates=30)["spread"]["vocab_vs_nnv_exponent"]
    assert noisy["std"] > spread["std"] and noisy["low"] < 0.3 < noisy["high"]
    assert analysis._statistics(rows_with(0.0), tpc)["vocab_vs_nnv_exponent"] == pytest.approx(0.3, abs=1e-6)


def test_optimal_vocab_against_nnv_at_equal_data():
    """Runs whose optimum is V* = 500·(N_nv/1e5)^0.2·(D/1e5)^0.5, D = C / (6(N_nv + V*·d)) the tokens trained at V*
    (solved by iteration): the joint fit reads 0.2 and 0.5, and at a fixed budget, where the larger model trains on
    fewer tokens, the optimal V falls with N_nv (the fixed-C exponent is near 0.2 − 0.5), as the sweep here found."""
    grid, settings = sw.SweepGrid(budgets=[3.5e10, 5e10, 7e10, 1e11]), sw.SweepSettings()
    grid.vocab_sizes = [128, 181, 256, 362, 512, 724, 1024]
    plans = sw.plan_runs(grid, settings)

    def v_star(p) -> float:
        v = 300.0
        for _ in range(60):
            v = 500 * (p.nnv / 1e5) ** 0.2 * (p.budget / (6 * (p.nnv + v * p.d)) / 1e5) ** 0.5
        return v

    rows = []
    for p in plans:
        lu = -0.5 * math.log(p.budget / 1e10) + 0.2 * (math.log(p.vocab) - math.log(v_star(p))) ** 2
        rows.append({**vars(p), "lu": lu})
    tpc = {v: 0.7 - 0.1 * math.log2(v / 128) for v in grid.vocab_sizes}
    a = sw.analyze(rows, tpc, replicates=10)
    assert all(m["flag"] == "interior" for m in a["per_model"])
    both = a["vocab_vs_nnv"]["with_data"]
    assert both["points"] == len(grid.budgets) * 3
    assert both["nnv_exponent"] == pytest.approx(0.2, abs=1e-4) and both["data_exponent"] == pytest.approx(
        0.5, abs=1e-4
    )
    assert a["vocab_vs_nnv"]["vocab_exponent"] == pytest.approx(0.2 - 0.5, abs=0.05)
    assert a["spread"]["vocab_vs_nnv_at_equal_data_exponent"]["median"] == pytest.approx(0.2, abs=1e-3)
    one_size = [r for r in rows if r["preset"] == "micro"]
    assert sw.analyze(one_size, tpc, replicates=0)["vocab_vs_nnv"]["with_data"] is None


def test_edge_extensions_add_one_vocabulary_beyond_an_unbracketed_optimum():
    settings = sw.SweepSettings()
    plans = sw.plan_runs(sw.SweepGrid([4e10], ["micro", "mini"], [128, 256, 512]), settings)
    lu = {}
    for p in plans:  # micro: best at the largest V; mini: best in the middle
        lu[p.name] = -p.vocab if p.preset == "micro" else abs(p.vocab - 256)
    extra = sw.edge_extensions(plans, lu, settings)
    assert [(p.preset, p.vocab) for p in extra] == [("micro", 1024)]
    assert extra[0].budget == 4e10 and extra[0].flops == pytest.approx(4e10, rel=0.05)
    lu = {p.name: p.vocab for p in plans}  # best at the smallest: 64 is below what a tokenizer can have
    assert sw.edge_extensions(plans, lu, settings) == []
    del lu[plans[0].name]  # a cell with a run missing is left alone
    assert all(p.preset != plans[0].preset for p in sw.edge_extensions(plans, {k: -v for k, v in lu.items()}, settings))


def test_huber_location_is_the_exact_minimizer():
    from mlxsuite.vocab.scaling.fits import huber, huber_location

    rng = np.random.default_rng(0)
    for n, delta in ((1, 0.1), (2, 1e-3), (7, 1e-3), (30, 0.05)):
        r = rng.standard_normal(n)
        a = huber_location(r, delta)
        grid = np.linspace(r.min() - 1, r.max() + 1, 200_001)
        brute = grid[np.argmin([huber(x - r, delta) for x in grid[::100]]) * 100]
        assert huber(a - r, delta) <= huber(brute - r, delta) + 1e-12
        for eps in (1e-6, -1e-6):
            assert huber(a - r, delta) <= huber(a + eps - r, delta) + 1e-15


# ---- a real tiny sweep ----------------------------------------------------------------------------------------------


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("MLXSUITE_MODELS", str(tmp_path / "models"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for name in ("argparse.py", "textwrap.py", "difflib.py", "enum.py", "dataclasses.py", "inspect.py", "typing.py"):
        (corpus / name).write_text((stdlib / name).read_text())
    return tmp_path, str(corpus)


GRID = dict(budgets=[1.5e9, 3e9], presets=["micro"], vocab_sizes=[400, 512, 640])


def _settings(corpus):
    return sw.SweepSettings(corpus=corpus, seq_len=32, batch_size=4, eval_chars=600)


class Interrupt(Exception):
    pass


def test_sweep_end_to_end_interrupt_and_resume(env):
    tmp_path, corpus = env
    events = []

    def interrupting(event, info):
        events.append((event, info))
        # stop at the first checkpoint of the second run, after the first run finished
        if event == "save" and info["run"] == plans[1].name and info["step"] < plans[1].steps:
            raise Interrupt

    plans = sw.plan_runs(sw.SweepGrid(**GRID), _settings(corpus))
    assert len(plans) == 6 and all(p.steps >= 5 for p in plans)
    with pytest.raises(Interrupt):
        sw.run_sweep("sw", sw.SweepGrid(**GRID), _settings(corpus), callback=interrupting)
    folder = tmp_path / "models" / "sw"
    first = folder / "runs" / plans[0].name / "model.safetensors"
    assert first.exists() and math.isfinite(sw.finished_metrics(first.parent)["val_lu"])
    assert (folder / "runs" / plans[1].name / "run" / "checkpoint").exists()
    assert not (folder / "runs" / plans[1].name / "model.safetensors").exists()
    first_mtime = first.stat().st_mtime_ns
    assert sum(e == "shared_tokenizer" and i["trained"] for e, i in events) == 3

    events.clear()
    doc = sw.run_sweep("sw", sw.SweepGrid(**GRID), _settings(corpus), callback=lambda e, i: events.append((e, i)))
    assert first.stat().st_mtime_ns == first_mtime  # not redone
    ends = [i for e, i in events if e == "run_end"]
    assert [i["skipped"] for i in ends] == [True] + [False] * 5
    starts = {i["run"]: i for e, i in events if e == "run_start"}
    assert plans[0].name not in starts and starts[plans[1].name]["resume"] is True
    resumed = next(i for e, i in events if e == "start" and i["run"] == plans[1].name)
    assert 0 < resumed["step"] < plans[1].steps
    assert not any(e == "shared_tokenizer" and i["trained"] for e, i in events)  # tokenizers shared, trained once

    # the shared tokenizer is the one every run of that V used
    tok = (folder / "tokenizers" / "v512.model").read_bytes()
    for p in plans:
        assert (folder / "runs" / p.name / "tokenizer.model").read_bytes() == (
            folder / "tokenizers" / f"v{p.vocab}.model"
        ).read_bytes()
    assert tok

    saved = json.loads((folder / "sweep.json").read_text())
    assert set(saved["runs"]) == {p.name for p in plans}
    a = doc["analysis"]
    assert len(a["per_model"]) == 2 and len(a["optimal_vocab"]) == 2
    assert len(a["fits"]["isoflops"]["selected"]) == 2
    assert a["fits"]["parametric"]["points"] == 6
    for o in a["optimal_vocab"]:
        assert 400 <= o["vocab"] <= 640 and o["flag"]
    for r in saved["runs"].values():
        assert math.isfinite(r["lu"]) and r["ce"] > 0 and r["bpc"] > 0

    # a third call redoes nothing
    events.clear()
    sw.run_sweep("sw", sw.SweepGrid(**GRID), _settings(corpus), callback=lambda e, i: events.append((e, i)))
    assert all(i["skipped"] for e, i in events if e == "run_end") and not any(e == "run_start" for e, _ in events)

    # other settings in the same folder are refused
    with pytest.raises(UserError, match="other settings"):
        sw.run_sweep("sw", sw.SweepGrid(**GRID), sw.SweepSettings(corpus=corpus, seq_len=16, batch_size=4))


def test_cli_sweep_json_and_plot(env, capsys):
    from test_cli_vocab import run

    tmp_path, corpus = env
    pytest.importorskip("matplotlib")
    plot = tmp_path / "sweep.png"
    args = [
        "vocab",
        "sweep",
        "--corpus",
        corpus,
        "--budgets",
        "1.5e9,3e9",
        "--presets",
        "micro",
        "--vocab-sizes",
        "400,512",
        "--seq-len",
        "32",
        "--batch-size",
        "4",
        "--eval-chars",
        "600",
        "--out",
        "cli-sweep",
        "--plot",
        str(plot),
    ]
    code, out, err = run(capsys, *args, "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert len(doc["runs"]) == 4
    assert set(doc["runs"][0]) >= {"preset", "vocab", "budget", "steps", "lu", "ce", "bpc"}
    assert [o["flag"] for o in doc["optimal_vocab"]] == ["two-points"] * 2
    assert len(doc["fits"]["isoflops"]["selected"]) == 2
    assert "skipped" in doc["fits"]["parametric"]  # 4 runs < 6
    assert plot.stat().st_size > 1000
    # rerun as a table: everything reused
    code, out, err = run(capsys, *args)
    assert code == 0, err
    assert "optimal V per budget" in out and "already finished" in err
    code, out, err = run(capsys, "vocab", "sweep", "--budgets", "1e3", "--presets", "micro", "--out", "x")
    assert code == 2 and "buys only" in err


BIN = Path(sys.executable).parent


@pytest.mark.skipif(shutil.which("mlx.launch", path=str(BIN)) is None, reason="mlx.launch not installed")
def test_two_process_launch_gives_the_one_process_table(env):
    """Issue 24: under `mlx.launch -n 2` each rank trains its share of the runs alone and rank 0 fits: the runs'
    losses and the analysis equal one process's (every run is deterministic); only rank 0 prints."""
    tmp_path, corpus = env
    args = ["vocab", "sweep", "--corpus", corpus, "--budgets", "1.5e9,3e9", "--presets", "micro"]
    args += ["--vocab-sizes", "400,512", "--seq-len", "32", "--batch-size", "4", "--eval-chars", "600", "--json"]
    run_env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "MLXSUITE_LOCAL_RANKS": "2"}
    one = subprocess.run(
        [str(BIN / "mlxsuite"), *args, "--out", "one"], capture_output=True, text=True, env=run_env, timeout=900
    )
    assert one.returncode == 0, one.stderr[-2000:]
    launch = [str(BIN / "mlx.launch"), "-n", "2", "--backend", "ring", "--", str(BIN / "mlxsuite")]
    two = subprocess.run([*launch, *args, "--out", "two"], capture_output=True, text=True, env=run_env, timeout=900)
    assert two.returncode == 0, two.stderr[-2000:]
    a, b = json.loads(one.stdout), json.loads(two.stdout)  # one JSON document: rank 1 prints nothing
    assert len(a["runs"]) == len(b["runs"]) == 4
    key = ("preset", "vocab", "budget", "steps", "tokens", "lu", "ce", "bpc")
    assert [{k: r[k] for k in key} for r in a["runs"]] == [{k: r[k] for k in key} for r in b["runs"]]
    for name in ("per_model", "optimal_vocab", "measured", "vocab_vs_nnv", "spread"):
        assert a[name] == b[name], name
    assert a["fits"]["isoflops"] == b["fits"]["isoflops"]
    # both ranks trained: the runs' folders were written by two processes (rank 0 wrote the sweep document)
    folder = tmp_path / "models" / "two"
    assert sorted(p.name for p in (folder / "runs").iterdir()) == sorted(
        r["name"] for r in json.loads((folder / "sweep.json").read_text())["plan"]
    )


def test_force_refuses_to_delete_a_folder_that_is_not_a_sweep(env):
    tmp_path, corpus = env
    other = tmp_path / "not-a-sweep"
    other.mkdir()
    (other / "keep.txt").write_text("precious")
    for force in (False, True):
        with pytest.raises(UserError, match="not a sweep"):
            sw.run_sweep(str(other), sw.SweepGrid(**GRID), _settings(corpus), force=force)
    assert (other / "keep.txt").read_text() == "precious"

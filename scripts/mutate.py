"""Break the mathematics on purpose, one change at a time, and check that the tests notice (not part of CI).

Each mutation replaces one exact snippet of the library in a scratch copy of this checkout (nothing here is
touched), runs the tests that guard it, and counts it caught when pytest reports a failure. The untouched copy is
run first: those tests must pass, else the table means nothing.

    PYTHON=.venv/bin/python nice -n 5 python3 scripts/mutate.py            # all (~10 min on 2 busy cores)
    python3 scripts/mutate.py silu_grad_drops_a_term kvp_no_value_term      # some, by name
    python3 scripts/mutate.py --list

A mutation whose snippet is no longer found is reported as `stale` (the code moved): update it here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
K, L, F = "tests/test_kernels.py", "tests/test_losses.py", "tests/test_families.py"
G = "tests/test_gguf_kquants.py"
N, C = "tests/test_native_attention.py", "mlxsuite/models/attention.c"
NATIVE = [N + "::test_native_attention_is_there_where_it_should_be", N + "::test_native_attention_equals_the_reference"]
NATIVE += [N + "::test_native_attention_with_sliding_windows"]
P = "tests/test_platform.py"
SHIM = [
    P + "::test_openblas_shim_forwards_the_standard_gemm_names",
    P + "::test_one_row_and_one_column_products_match_numpy",
    P + "::test_the_shim_gemm_of_one_row_or_column_called_directly",
]

# name: (file, snippet, replacement, tests)
MUTATIONS: dict[str, tuple[str, str, str, list[str]]] = {
    # ---- KV Prediction
    "kvp_no_value_term": (
        "mlxsuite/kvp/recipe.py",
        "total = total + lambda_kv * (k_l1 + v_l1)",
        "total = total + lambda_kv * k_l1",
        [L + "::test_kvp_loss_and_every_term_by_hand"],
    ),
    "kvp_lambda_c_sign_flipped": (
        "mlxsuite/kvp/recipe.py",
        "total = total + lambda_kv * (k_l1 + v_l1)",
        "total = total - lambda_kv * (k_l1 + v_l1)",
        [L + "::test_kvp_loss_and_every_term_by_hand"],
    ),
    "kvp_aux_ce_dropped": (
        "mlxsuite/kvp/recipe.py",
        "total = base_ce + lambda_aux * aux_ce",
        "total = base_ce",
        [L + "::test_kvp_loss_and_every_term_by_hand"],
    ),
    "kvp_key_norm_missing_on_predicted_keys": (
        "mlxsuite/models/kv_prediction.py",
        "keys = [layer.self_attn.normalize_keys(k) for layer, (k, _) in zip(self.base.layers, kv)]",
        "keys = [k for k, _ in kv]",
        [L + "::test_kvp_loss_and_every_term_by_hand"],
    ),
    "kvp_fill_writes_keys_without_key_norm": (
        "mlxsuite/models/kv_prediction.py",
        "c.update_and_fetch(layer.self_attn.finish_keys(k, c.offset, kernels.for_cache(c) if kernels else None), v)",
        "c.update_and_fetch(layer.self_attn.rope(k, offset=c.offset), v)",
        ["tests/test_kvp.py::test_identity_predictor_reproduces_the_base"],
    ),
    "kvp_fill_writes_keys_at_position_0": (
        "mlxsuite/models/kv_prediction.py",
        "c.update_and_fetch(layer.self_attn.finish_keys(k, c.offset, kernels.for_cache(c) if kernels else None), v)",
        "c.update_and_fetch(layer.self_attn.finish_keys(k, 0, None), v)",
        ["tests/test_kvp.py::test_chunked_kvp_prefill_equals_the_unchunked_reference"],
    ),
    "kvp_predictor_bias_dropped": (
        "mlxsuite/models/kv_prediction.py",
        "y = linear(x.transpose(0, 2, 1, 3).reshape(B, T, h * d))",
        "y = x.transpose(0, 2, 1, 3).reshape(B, T, h * d) @ linear.weight.T",
        [
            L + "::test_kvp_loss_and_every_term_by_hand",
            L + "::test_kvp_prefill_writes_the_predicted_kv_into_the_base_cache",
        ],
    ),
    "kvp_k_and_v_swapped_in_predicted_cache": (
        "mlxsuite/models/kv_prediction.py",
        "write_base_kv(self.base, list(zip(keys, values)), base_cache)",
        "write_base_kv(self.base, list(zip(values, keys)), base_cache)",
        [L + "::test_kvp_prefill_writes_the_predicted_kv_into_the_base_cache"],
    ),
    "kvp_k_and_v_swapped_in_training": (
        "mlxsuite/models/kv_prediction.py",
        "return aux_logits, list(zip(keys, values))",
        "return aux_logits, list(zip(values, keys))",
        [L + "::test_kvp_loss_and_every_term_by_hand"],
    ),
    "kvp_no_rope_on_predicted_keys": (
        "mlxsuite/models/lm.py",
        "q, k = self.finish_queries(q, offset, kernels), self.finish_keys(k, offset, kernels)",
        "q, k = self.finish_queries(q, offset, kernels), "
        "(self.normalize_keys(k) if kv is not None else self.finish_keys(k, offset, kernels))",
        [
            L + "::test_kvp_loss_and_every_term_by_hand",
            L + "::test_kvp_prefill_writes_the_predicted_kv_into_the_base_cache",
        ],
    ),
    "kvp_gradients_summed_not_averaged_across_processes": (
        "mlxsuite/train/trainer.py",
        "grads = average_gradients(grads, group=group)",
        "grads = tree_map(lambda g: mx.distributed.all_sum(g, group=group), grads)",
        ["tests/test_kvp.py::test_two_processes_match_one_process"],
    ),
    # ---- fused CPU kernels
    "silu_grad_drops_a_term": (
        "mlxsuite/models/kernels.py",
        "return cotangent * u * (s + gs * (1.0 - s)), cotangent * gs",
        "return cotangent * u * s, cotangent * gs",
        [K],
    ),
    "silu_grad_u_wrong": (
        "mlxsuite/models/kernels.py",
        "return cotangent * u * (s + gs * (1.0 - s)), cotangent * gs",
        "return cotangent * u * (s + gs * (1.0 - s)), cotangent * s",
        [K],
    ),
    "exp_vjp_drops_the_output": (
        "mlxsuite/models/kernels.py",
        "    return _mul(cotangent, output)",
        "    return cotangent",
        [K],
    ),
    "rope_rotation_sign_flipped": (
        "mlxsuite/models/kernels.py",
        "return (x1 * cos - x2 * sin) * scale, (x1 * sin + x2 * cos) * scale",
        "return (x1 * cos + x2 * sin) * scale, (x1 * sin + x2 * cos) * scale",
        [K],
    ),
    "attention_denominator_dropped": (
        "mlxsuite/models/kernels.py",
        "return ((weights @ v) / (weights @ mx.ones((L, 1), dtype=weights.dtype))).reshape(B, H, n, D)",
        "return (weights @ v).reshape(B, H, n, D)",
        [K],
    ),
    "fused_kernels_never_selected": (
        "mlxsuite/models/kernels.py",
        "    if n == 1 or not available(layers, dtype, cache):",
        "    if True:",
        [K],
    ),
    "attention_block_queries_at_the_chunk_start": (
        "mlxsuite/models/kernels.py",
        "                    self.offset + s,",
        "                    self.offset,",
        [K],
    ),
    "attention_block_misses_its_last_key": (
        "mlxsuite/models/kernels.py",
        "            keys = self.offset + end - first_key",
        "            keys = self.offset + end - first_key - 1",
        [K],
    ),
    "prefill_reserves_nothing": (
        "mlxsuite/generate.py",
        '    with reserved([*cache, *getattr(fill, "caches", ())], L):',
        "    with reserved([], L):",
        ["tests/test_kvp_batched.py"],
    ),
    "long_prompts_keep_the_short_prefill_step": (
        "mlxsuite/generate.py",
        "return LONG_PROMPT_CPU[1] if prompt_tokens > LONG_PROMPT_CPU[0] else",
        "return LONG_PROMPT_CPU[1] if prompt_tokens > 10 * LONG_PROMPT_CPU[0] else",
        ["tests/test_ttft.py::test_the_default_prefill_step_follows_the_prompt_length"],
    ),
    "cpu_prefill_step_ignores_the_native_attention": (
        "mlxsuite/generate.py",
        "if mx.default_device().type != mx.DeviceType.cpu or native_attention.available():",
        "if mx.default_device().type != mx.DeviceType.cpu:",
        ["tests/test_ttft.py::test_the_default_prefill_step_follows_the_prompt_length"],
    ),
    "last_chunk_logits_of_its_first_position": (
        "mlxsuite/models/lm.py",
        "return self.logits(self.model(inputs, cache)[:, -1])",
        "return self.logits(self.model(inputs, cache)[:, 0])",
        ["tests/test_ttft.py"],
    ),
    "gelu_grad_drops_the_inner_derivative": (
        "mlxsuite/models/kernels.py",
        "return cotangent * u * (s + gs * (1.0 - s) * dz), cotangent * gs",
        "return cotangent * u * (s + gs * (1.0 - s)), cotangent * gs",
        [K],
    ),
    "soft_cap_factor_dropped": (
        "mlxsuite/models/kernels.py",
        "return cap - (cap + cap) / (1.0 + e)",
        "return cap - cap / (1.0 + e)",
        [K],
    ),
    "sliding_window_dropped_from_the_kernel_mask": (
        "mlxsuite/models/kernels.py",
        "causal = causal & (query_pos < key_pos + window)",
        "causal = causal",
        [F],
    ),
    # ---- families (Gemma, Phi-3, OpenELM) against mlx-lm's classes
    "gemma_norm_without_the_one": (
        "mlxsuite/models/families.py",
        "return OffsetRMSNorm(dims, eps=args.rms_norm_eps) if args.norm_offset else",
        "return nn.RMSNorm(dims, eps=args.rms_norm_eps) if args.norm_offset else",
        [F],
    ),
    "gemma_final_soft_cap_dropped": (
        "mlxsuite/models/lm.py",
        "return out if cap is None else mx.tanh(out / cap) * cap",
        "return out",
        [F],
    ),
    "openelm_every_layer_with_the_first_layers_kv_heads": (
        "mlxsuite/models/lm.py",
        "return self.num_kv_heads[i] if self.num_kv_heads else self.num_key_value_heads",
        "return self.num_kv_heads[0] if self.num_kv_heads else self.num_key_value_heads",
        [F],
    ),
    "sliding_window_flops_ignore_the_window": (
        "mlxsuite/models/flops.py",
        "window = args.sliding_window if args.is_sliding(i) else None",
        "window = None",
        [F],
    ),
    # ---- MoMa
    "moma_aux_router_threshold_0_73": (
        "mlxsuite/models/moma_experts.py",
        "chosen = (aux(x) > 0) & member[:, None]",
        "chosen = (mx.sigmoid(aux(x)) > 0.73) & member[:, None]",
        [L],
    ),
    "mod_aux_router_threshold_0_73": (
        "mlxsuite/models/moma.py",
        "sel = self.mod_aux_router(x).reshape(N) > 0",
        "sel = mx.sigmoid(self.mod_aux_router(x).reshape(N)) > 0.73",
        [L],
    ),
    "mod_router_bottom_k": (
        "mlxsuite/models/moma.py",
        "mx.argpartition(-r, kth=k_d - 1)",
        "mx.argpartition(r, kth=k_d - 1)",
        [L],
    ),
    "moma_inference_gate_dropped": (
        "mlxsuite/models/moma_experts.py",
        "weights.append(mx.where(chosen, mx.sigmoid(router(x)), 0.0))",
        "weights.append(mx.where(chosen, 1.0, 0.0))",
        [L],
    ),
    "per_modality_ce_denominators_swapped": (
        "mlxsuite/moma/train.py",
        "(ce * (1 - img)).sum() / mx.maximum(n_txt, 1), (ce * img).sum() / mx.maximum(n_img, 1)",
        "(ce * (1 - img)).sum() / mx.maximum(n_img, 1), (ce * img).sum() / mx.maximum(n_txt, 1)",
        [L],
    ),
    "router_bce_summed_over_routers": (
        "mlxsuite/moma/train.py",
        "return sum(t[0] for t in terms) / len(terms), {",
        "return sum(t[0] for t in terms), {",
        [L],
    ),
    "router_bce_sign_flipped": (
        "mlxsuite/moma/train.py",
        'bce = nn.losses.binary_cross_entropy(logits, target, with_logits=True, reduction="none")',
        'bce = -nn.losses.binary_cross_entropy(logits, target, with_logits=True, reduction="none")',
        [L],
    ),
    "eta_interpolation_exponent_inverted": (
        "mlxsuite/moma/compare.py",
        "t = f0 * (f / f0) ** ((l0 - dense_final) / (l0 - loss)) if l0 != loss else f",
        "t = f0 * (f / f0) ** ((l0 - loss) / (l0 - dense_final)) if l0 != loss else f",
        ["tests/test_moma.py::test_eta_interpolation_and_augment"],
    ),
    # ---- the vocabulary paper
    "lu_without_unigram_normalisation": (
        "mlxsuite/train/evaluate.py",
        "parts.append((ce + log_uni[targets]).sum())",
        "parts.append(ce.sum())",
        [L, "tests/test_evaluate.py"],
    ),
    "unigram_table_not_normalised": (
        "mlxsuite/data/tokenizer.py",
        "return counts / counts.sum()",
        "return counts / len(counts)",
        [L],
    ),
    "tokens_per_character_without_clamp": (
        "mlxsuite/vocab/scaling/laws.py",
        "lnv = np.log(np.minimum(vocab, self.clamp))",
        "lnv = np.log(vocab)",
        [L],
    ),
    # ---- GGUF block formats (issue 20)
    "q4k_high_scales_from_the_min_nibble": (
        "mlxsuite/convert/gguf_blocks.py",
        "(s[:, 8:12] & 0xF) | ((s[:, 0:4] >> 6) << 4)",
        "(s[:, 8:12] >> 4) | ((s[:, 0:4] >> 6) << 4)",
        [G + "::test_every_type_kept_and_dequantized"],
    ),
    "q6k_high_bits_shifts_swapped": (
        "mlxsuite/convert/gguf_blocks.py",
        "shift = (2 * np.arange(4, dtype=np.uint8)).reshape(1, 1, 2, 2, 1)",
        "shift = (2 * np.arange(4, dtype=np.uint8)).reshape(1, 1, 2, 2, 1).swapaxes(2, 3)",
        [G + "::test_every_type_kept_and_dequantized"],
    ),
    "q3k_offset_3_not_4": (
        "mlxsuite/convert/gguf_blocks.py",
        "return codes, scale, -4 * scale, 3",
        "return codes, scale, -3 * scale, 3",
        [G + "::test_every_type_kept_and_dequantized"],
    ),
    "mlx_packing_big_endian_bits": (
        "mlxsuite/convert/gguf_blocks.py",
        'return np.packbits(stream, axis=-1, bitorder="little")',
        'return np.packbits(stream, axis=-1, bitorder="big")',
        [G + "::test_every_type_kept_and_dequantized"],
    ),
    "iq4xs_scale_high_bits_truncated": (
        "mlxsuite/convert/gguf_blocks.py",
        ">> (2 * np.arange(8, dtype=np.uint16))) & 3",
        ">> (2 * np.arange(8, dtype=np.uint16))) & 1",
        [G + "::test_every_type_kept_and_dequantized"],
    ),
    "gguf_qk_rows_not_unpermuted": (
        "mlxsuite/convert/gguf_reader.py",
        "return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)",
        "return w",
        [G + "::test_every_type_kept_and_dequantized"],
    ),
    "to_gguf_qk_rows_not_permuted": (
        "mlxsuite/convert/to_gguf.py",
        "arrays = [permute_rows(a, heads) for a in arrays]",
        "arrays = arrays",
        [G + "::test_round_trip_through_to_gguf"],
    ),
    "q5_1_fifth_bits_shifted": (
        "mlxsuite/convert/gguf_writer.py",
        'body = [m.view(np.uint8), qh.astype("<u4")',
        'body = [m.view(np.uint8), (qh >> 1).astype("<u4")',
        [G + "::test_round_trip_through_to_gguf"],
    ),
    "qwen3_q_and_k_norms_swapped": (
        "mlxsuite/convert/gguf_reader.py",
        '"attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",',
        '"attn_q_norm": "self_attn.k_norm", "attn_k_norm": "self_attn.q_norm",',
        [G + "::test_qwen_architectures_round_trip"],
    ),
    # ---- the native CPU attention (C)
    "native_row_misses_its_own_key": (
        C,
        "int hi = pos + 1 - start < width ? (int)(pos + 1 - start) : width;",
        "int hi = pos - start < width ? (int)(pos - start) : width;",
        NATIVE,
    ),
    "native_softmax_not_normalized": (
        C,
        "for (int d = 0; d < dim; d++) o[d] = p[d] * inv;",
        "for (int d = 0; d < dim; d++) o[d] = p[d];",
        NATIVE,
    ),
    "native_window_ignored": (
        C,
        "int lo = j->window > 0 && pos - j->window + 1 - start > 0 ? (int)(pos - j->window + 1 - start) : 0;",
        "int lo = 0;",
        NATIVE,
    ),
    "native_max_not_subtracted": (
        C,
        "float e = exp_nonpositive(s[c] - m);",
        "float e = exp_nonpositive(s[c]);",
        [N + "::test_native_attention_with_scores_far_from_zero"],
    ),
    "native_packed_rows_take_the_wrong_positions": (
        C,
        "long pos = j->query_pos + r0 + row % rows - j->key_pos;",
        "long pos = j->query_pos + r0 + row / rep - j->key_pos;",
        NATIVE,
    ),
    "native_exp_drops_the_cubic_term": (
        C,
        "g * (-0.055504108664821580f +",
        "g * (0.0f * -0.055504108664821580f +",
        NATIVE,
    ),
    "native_queries_of_the_wrong_group": (
        C,
        "j->q + (g * rep + a) * j->q_head",
        "j->q + (g + a) * j->q_head",
        NATIVE,
    ),
    "native_masked_keys_not_zeroed": (C, "for (int c = hi; c < width; c++) s[c] = 0.0f;", "", NATIVE),
    # ---- the BLAS shim's GEMV paths (a wrong shim fails its self-test and is not loaded: the shim test sees that)
    "gemv_one_row_transposes_the_wrong_side": (
        "mlxsuite/platform/blas.py",
        "scipy_cblas_##p##gemv(o, tb == NO_TRANS ? TRANS : NO_TRANS,",
        "scipy_cblas_##p##gemv(o, tb == NO_TRANS ? NO_TRANS : TRANS,",
        SHIM,
    ),
    "gemv_one_column_reads_b_contiguously": (
        "mlxsuite/platform/blas.py",
        "tb == NO_TRANS ? ldb : 1, beta, c, ldc);",
        "1, beta, c, ldc);",
        SHIM,
    ),
    "blas_verdict_keyed_on_the_shims_last_use": (
        "mlxsuite/platform/blas.py",
        'stamp = f"ino{stat.st_ino}" if built_here else str(stat.st_mtime_ns)',
        "stamp = str(stat.st_mtime_ns)",
        [P + "::test_the_self_test_runs_once_per_library_not_once_per_process"],
    ),
    "gemv_one_row_drops_the_accumulation": (
        "mlxsuite/platform/blas.py",
        "alpha, b, ldb, a, ta == NO_TRANS ? 1 : lda, beta, c, 1);",
        "alpha, b, ldb, a, ta == NO_TRANS ? 1 : lda, 0, c, 1);",
        SHIM,
    ),
}


def scratch_copy() -> Path:
    dest = Path(tempfile.mkdtemp(prefix="mlxsuite-mutate-")) / "repo"
    skip = shutil.ignore_patterns(".git", ".venv", "__pycache__", ".pytest_cache", "*.egg-info")

    def ignore(folder, names):  # the store `models/` at the top, not the package `mlxsuite/models`
        return set(skip(folder, names)) | ({"models"} if Path(folder) == ROOT else set())

    shutil.copytree(ROOT, dest, ignore=ignore)
    return dest


def run_tests(copy: Path, tests: list[str]) -> tuple[int, str]:
    python = os.environ.get("PYTHON", sys.executable)
    env = {**os.environ, "PYTHONPATH": str(copy), "MLXSUITE_MODELS": str(copy / "models")}
    r = subprocess.run(
        [python, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests],
        cwd=copy,
        env=env,
        capture_output=True,
        text=True,
    )
    lines = r.stdout.strip().splitlines()
    return r.returncode, lines[-1] if lines else r.stderr.strip()[-200:]


def main(argv: list[str]) -> int:
    if "--list" in argv:
        print("\n".join(MUTATIONS))
        return 0
    chosen = [a for a in argv if not a.startswith("-")] or list(MUTATIONS)
    unknown = [n for n in chosen if n not in MUTATIONS]
    if unknown:
        print(f"unknown mutation(s): {', '.join(unknown)} (see --list)", file=sys.stderr)
        return 2
    copy = scratch_copy()
    try:
        tests = sorted({t for n in chosen for t in MUTATIONS[n][3]})
        code, summary = run_tests(copy, tests)
        print(f"unmutated: {summary}", flush=True)
        if code != 0:
            print("the guarding tests fail without any mutation: fix that first", file=sys.stderr)
            return 1
        missed = 0
        print(f"{'mutation':52} {'result':8} tests", flush=True)
        for name in chosen:
            path, old, new, guards = MUTATIONS[name]
            target = copy / path
            source = target.read_text()
            if source.count(old) != 1:
                print(f"{name:52} {'stale':8} snippet found {source.count(old)}× in {path}", flush=True)
                missed += 1
                continue
            target.write_text(source.replace(old, new))
            t0 = time.perf_counter()
            try:
                code, summary = run_tests(copy, guards)
            finally:
                target.write_text(source)
            caught = code == 1  # pytest's "tests failed" (2+: errors/usage, which prove nothing)
            missed += not caught
            result = "caught" if caught else f"MISSED({code})"
            print(f"{name:52} {result:8} {summary} [{time.perf_counter() - t0:.0f} s]", flush=True)
        print(f"{len(chosen) - missed}/{len(chosen)} caught")
        return 1 if missed else 0
    finally:
        shutil.rmtree(copy.parent, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Weights in from Hugging Face / mlx-lm folders (`from_hf`), the config mapping (`hf_config_to_args`) and the
layer choice of LP pruning (`pruned_layers`). GGUF files: `convert.from_gguf`; out to mlx-lm, pruned, quantized:
`convert.derive`.

Every conversion runs the pipeline of `convert.checkpoint` (scan the headers, check every tensor against the
target model before writing anything, stream shard by shard into a temporary folder renamed when complete).
Layer names are the Hugging Face / mlx-lm Llama names, so Llama, Mistral, Qwen2 and Qwen3 checkpoints map one to
one onto `mlxsuite.models.lm` (Qwen2: q/k/v biases via `qkv_bias`; Qwen3: `qk_norm`). Quantization follows
`mlx_lm.convert` (`convert.quantization`). The library never prints: progress goes to a
`progress(done, total, tensor_name)` callback.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import mlx.core as mx

from mlxsuite.convert import quantization
from mlxsuite.convert.checkpoint import (
    ST_FLOAT,
    Item,
    Result,
    SafetensorsSource,
    check_tensors,
    copy_side_files,
    expected_shapes,
    name_list,
    natural,
    quantized_layers,
    read_config,
    refuse_existing,
    scan,
    shards_by_source,
    write_json,
    write_shards,
)
from mlxsuite.convert.quantization import QuantSpec
from mlxsuite.data.hf_tokenizer import copy_tokenizer_files
from mlxsuite.data.tokenizer import TOKENIZER_FILE
from mlxsuite.models import lm
from mlxsuite.platform import ProgressCallback, atomic
from mlxsuite.platform.errors import UserError

HF_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")  # the other families open their snapshots as they are
DTYPES = {"float32": mx.float32, "bfloat16": mx.bfloat16, "float16": mx.float16}
# HF defaults where config.json may omit a key (transformers' config classes)
_HF_DEFAULTS = {
    "llama": dict(rope_theta=10000.0, max_position_embeddings=2048, rms_norm_eps=1e-6),
    "mistral": dict(rope_theta=10000.0, max_position_embeddings=4096 * 32, rms_norm_eps=1e-6),
    "qwen2": dict(rope_theta=10000.0, max_position_embeddings=32768, rms_norm_eps=1e-6),
    "qwen3": dict(rope_theta=10000.0, max_position_embeddings=32768, rms_norm_eps=1e-6),
}
_LAYER = re.compile(r"^(model|transformer)\.layers\.(\d+)\.(.*)$")  # transformer: OpenELM


# ---- layer pruning (KV Prediction, KVP-LP) -------------------------------------------------------------------------


def pruned_layers(n_layers: int, keep: float) -> list[int]:
    """The layers an LP-`keep` model retains (KV Prediction paper, Table 4; `layer_pruned_gpt_configs`):

    - 0.75: drop every layer with index ≡ 3 (mod 4): 0,1,2,4,5,6,8,… (21 of 28, 27 of 36)
    - 0.50: the even layers 0,2,4,… (14 of 28, 18 of 36)
    - 0.25: every fourth layer 0,4,8,… (7 of 28, 9 of 36)
    """
    rule = _keep_rule(keep)
    if n_layers < 1:
        raise UserError(f"cannot prune a model with {n_layers} layers")
    return [i for i in range(n_layers) if rule(i)]


_KEEP_RULES = {0.75: lambda i: i % 4 != 3, 0.5: lambda i: i % 2 == 0, 0.25: lambda i: i % 4 == 0}


def _keep_rule(keep: float):
    for k, rule in _KEEP_RULES.items():
        if abs(keep - k) < 1e-9:
            return rule
    raise UserError(f"`keep` must be 0.75, 0.5 or 0.25 (the KV Prediction paper's LP models), got {keep}")


# ---- Hugging Face → this project -----------------------------------------------------------------------------------


def _check_supported(config: dict, mt) -> None:
    """Refuse what this converter cannot read: other architectures, other quantizers, other activations,
    sliding-window layers, missing sizes."""
    if mt not in HF_MODEL_TYPES:
        found = f"model_type {mt!r}" if mt else "no model_type"
        supported = ", ".join(HF_MODEL_TYPES)
        raise UserError(f"unsupported checkpoint: config.json has {found}; from-hf converts {supported}")
    qc = config.get("quantization_config")
    if qc and not config.get("quantization"):  # mlx-lm writes both; other quantizers only quantization_config
        method = qc.get("quant_method", "unknown") if isinstance(qc, dict) else "unknown"
        raise UserError(f"checkpoints quantized with {method} cannot be read: convert the float version")
    act = config.get("hidden_act", config.get("hidden_activation", "silu"))
    if act not in ("silu", "swish"):
        raise UserError(f"unsupported activation hidden_act={act!r}: only SwiGLU (silu) decoders are supported")
    layer_types = config.get("layer_types") or []
    if any(t != "full_attention" for t in layer_types):
        raise UserError("sliding-window attention layers (layer_types) are not supported")
    required = ["hidden_size", "num_hidden_layers", "intermediate_size", "num_attention_heads", "vocab_size"]
    lacking = [k for k in required if not isinstance(config.get(k), int)]
    if lacking:
        raise UserError(f"config.json lacks {', '.join(lacking)}")


def _rope(config: dict, defaults: dict) -> tuple[float, Optional[dict]]:
    """(rope_theta, rope_scaling or None for the default RoPE)."""
    # transformers >= 5 nests rope_theta and the scaling under rope_parameters
    params = config.get("rope_parameters") or {}
    theta = config.get("rope_theta", params.get("rope_theta", defaults["rope_theta"]))
    scaling = config.get("rope_scaling")
    if scaling is None and params.get("rope_type", params.get("type", "default")) != "default":
        scaling = {k: v for k, v in params.items() if k != "rope_theta"}
    if scaling is not None and scaling.get("rope_type", scaling.get("type", "default")) == "default":
        scaling = None
    return theta, scaling


def hf_config_to_args(config: dict, has_lm_head: Optional[bool] = None) -> tuple[lm.ModelArgs, list[str]]:
    """ModelArgs for a Hugging Face config.json of the Llama family, plus notes on what the conversion ignores."""
    mt = config.get("model_type")
    _check_supported(config, mt)
    notes = []
    defaults = _HF_DEFAULTS[mt]
    theta, scaling = _rope(config, defaults)
    if config.get("sliding_window") and (mt == "mistral" or config.get("use_sliding_window")):
        notes.append(
            f"sliding_window={config['sliding_window']} is ignored (full attention, as in mlx-lm): "
            "outputs differ from transformers only past the window"
        )
    tie = config.get("tie_word_embeddings")
    if tie is None:  # not stated: tied exactly when the checkpoint has no output head
        tie = False if has_lm_head is None else not has_lm_head
    heads = config["num_attention_heads"]
    kw = dict(
        model_type=mt,
        hidden_size=config["hidden_size"],
        num_hidden_layers=config["num_hidden_layers"],
        intermediate_size=config["intermediate_size"],
        num_attention_heads=heads,
        num_key_value_heads=config.get("num_key_value_heads") or heads,
        vocab_size=config["vocab_size"],
        head_dim=config.get("head_dim") if mt != "qwen2" else None,  # qwen2 (and mlx-lm's qwen2) use d / heads
        rms_norm_eps=config.get("rms_norm_eps", defaults["rms_norm_eps"]),
        rope_theta=float(theta),
        rope_traditional=False,
        rope_scaling=scaling,
        max_position_embeddings=config.get("max_position_embeddings") or defaults["max_position_embeddings"],
        tie_word_embeddings=bool(tie),
        attention_bias=bool(config.get("attention_bias", False)) if mt != "qwen2" else False,
        qkv_bias=mt == "qwen2",
        mlp_bias=bool(config.get("mlp_bias", False)) if mt == "llama" else False,
        qk_norm=mt == "qwen3",
    )
    try:
        args = lm.ModelArgs(**kw)
        lm.Model(args)  # rejects rope scalings mlx-lm cannot build, before anything is read
    except (TypeError, ValueError, KeyError) as e:
        raise UserError(f"config.json does not describe a supported model: {e}") from None
    return args, notes


def _source_dtype(config: dict) -> Optional[str]:
    d = config.get("torch_dtype", config.get("dtype"))
    return d if d in DTYPES else None


def _cast(w: mx.array, dtype) -> mx.array:
    return w.astype(dtype) if dtype is not None and mx.issubdtype(w.dtype, mx.floating) else w


def _checked_tensors(tensors: dict, args: lm.ModelArgs, source_quant: dict, hf_dir: Path) -> dict:
    """The tensors to convert, checked against the model: what mlx-lm's sanitize drops is dropped (precomputed
    rotary frequencies, the head of a tied model); only float or mlx-lm quantized tensors."""
    dropped = [k for k in tensors if "rotary_emb.inv_freq" in k]
    if args.tie_word_embeddings and "lm_head.weight" in tensors:
        dropped.append("lm_head.weight")
    tensors = {k: v for k, v in tensors.items() if k not in dropped}
    check_tensors({k: v.shape for k, v in tensors.items()}, expected_shapes(args, source_quant), str(hf_dir))
    packed = {f"{p}.{s}" for p in source_quant for s in ("weight", "scales", "biases")}
    not_float = sorted((k for k, v in tensors.items() if v.dtype not in ST_FLOAT and k not in packed), key=natural)
    if not_float:
        raise UserError(
            f"only float or mlx-lm quantized checkpoints can be converted; not float: {name_list(not_float, 5)}"
        )
    return tensors


def _out_config(args: lm.ModelArgs, config: dict, block: Optional[dict], hf_dir: Path, target: Optional[str]) -> dict:
    """config.json of the converted model: its args, the source's special tokens and quantization, provenance."""
    out_config = args.to_dict()
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if config.get(key) is not None:
            out_config[key] = config[key]
    if block is not None:
        out_config["quantization"] = dict(block)
        out_config["quantization_config"] = dict(block)
    out_config["mlxsuite"] = {
        "format": 1,
        "converted_from": {
            "path": str(hf_dir.resolve()),
            "model_type": config.get("model_type"),
            "architectures": config.get("architectures"),
            "dtype": target or "as stored",
        },
    }
    return out_config


def from_hf(
    hf_dir: str | Path,
    out: str | Path,
    dtype: Optional[str] = None,
    quant: Optional[QuantSpec] = None,
    dequantize: bool = False,
    force: bool = False,
    progress: Optional[ProgressCallback] = None,
) -> Result:
    """Convert a Hugging Face or mlx-lm checkpoint (Llama, Mistral, Qwen2, Qwen3; safetensors only; a folder, a
    Hugging Face cache folder or a repo id) into a model folder of this project at `out` (a path), as
    `mlx_lm.convert` would: `dtype` for the float tensors (default: the checkpoint's torch_dtype); `quant` quantizes
    a float checkpoint; `dequantize` turns an mlx-lm quantized one (any mode, mixed bits) back into floats; an mlx-lm
    quantized checkpoint is otherwise kept as it is. The tokenizer comes along. `hf_dir` is a local folder
    (`store.refs.source_folder` finds one for a repo id)."""
    out = Path(out)
    if dtype is not None and dtype not in DTYPES:
        raise UserError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype}")
    if quant is not None and dequantize:
        raise UserError("choose either `quantize` or `dequantize`, not both")
    hf_dir = Path(hf_dir).expanduser()
    tensors = scan(hf_dir)  # refuses pickle checkpoints, missing folders
    config = read_config(hf_dir)
    args, notes = hf_config_to_args(config, has_lm_head="lm_head.weight" in tensors)
    source_quant = quantized_layers(config, tensors) if config.get("quantization") else {}
    if source_quant and quant is not None:
        raise UserError(f"{hf_dir} is already quantized: pass `dequantize` to convert it to floats instead")
    if dequantize and not source_quant:
        raise UserError(f"`dequantize`: {hf_dir} is not quantized")
    refuse_existing(out, force)

    tensors = _checked_tensors(tensors, args, source_quant, hf_dir)

    target = dtype or _source_dtype(config)
    cast = DTYPES[target] if target else None
    layers, block = {}, None
    if quant is not None:
        layers, block = quantization.plan(args, quant, notes)
    elif source_quant and not dequantize:
        block = config["quantization"]
    source = SafetensorsSource(tensors)

    def produce(item: Item) -> dict[str, mx.array]:
        path = item.out[: -len(".weight")]
        if dequantize and path in source_quant:
            parts = [
                source.take(f"{path}.{s}") if f"{path}.{s}" in tensors else None for s in ("weight", "scales", "biases")
            ]
            return {item.out: quantization.dequantize(*parts, source_quant[path], dtype=cast)}
        w = _cast(source.take(item.src), cast)
        if path in layers:
            return quantization.quantize(path, w, layers[path])
        return {item.out: w}

    out_config = _out_config(args, config, block, hf_dir, target)
    skip = {f"{p}.{s}" for p in source_quant for s in ("scales", "biases")} if dequantize else set()
    items = [Item(k, k, v) for k, v in tensors.items() if k not in skip]
    with atomic.folder(out, force=force) as tmp:
        n, nbytes, shards = write_shards(tmp, shards_by_source(items), produce, progress)
        write_json(tmp / "config.json", out_config)
        copied = copy_tokenizer_files(hf_dir, tmp)
        if "tokenizer.json" not in copied:
            if (hf_dir / TOKENIZER_FILE).is_file():  # a SentencePiece-only checkpoint: our Tokenizer reads it
                atomic.copy_file(hf_dir / TOKENIZER_FILE, tmp / TOKENIZER_FILE)
                notes.append("no tokenizer.json: copied the SentencePiece tokenizer.model (no BOS is added)")
            else:
                notes.append("the checkpoint has no tokenizer (tokenizer.json): the model has none")
        copy_side_files(hf_dir, tmp, ("generation_config.json",))
    return Result(out, n, nbytes, shards, out_config, notes)


# Sample text for checking a converted tokenizer against SentencePiece: whitespace runs, digits, newlines (byte
# fallback), accents, CJK, emoji, NFKC-folded characters.
TOKENIZER_CHECK_TEXT = [
    "The quick brown fox jumps over the lazy dog.",
    "  two leading spaces,   runs of spaces\tand a tab",
    "line one\nline two\n\n    indented code(x) -> y  # 1234567890",
    "naïve café, Straße, 東京, 🙂, ﬁ ligature, ① ½",
    "",
]

"""Weight conversion: Hugging Face / mlx-lm folders → this project, this project → mlx-lm, layer pruning,
quantization. GGUF files: `mlxsuite.convert_gguf`.

Every conversion runs the pipeline of `mlxsuite.checkpoint` (scan the headers, check every tensor against the
target model before writing anything, stream shard by shard into a temporary folder renamed when complete).
Layer names are the Hugging Face / mlx-lm Llama names, so Llama, Mistral, Qwen2 and Qwen3 checkpoints map one to
one onto `mlxsuite.models.lm` (Qwen2: q/k/v biases via `qkv_bias`; Qwen3: `qk_norm`). Quantization follows
`mlx_lm.convert` (`mlxsuite.quantization`). The library never prints: progress goes to a
`progress(done, total, tensor_name)` callback.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import mlx.core as mx

from mlxsuite import store
from mlxsuite.convert import quantization
from mlxsuite.convert.checkpoint import (
    ST_FLOAT,
    Item,
    Progress,
    Result,
    SafetensorsSource,
    check_tensors,
    copy_side_files,
    expected_shapes,
    name_list,
    natural,
    open_model_folder,
    quantized_layers,
    refuse_existing,
    scan,
    shards_by_source,
    write_json,
    write_weights,
)
from mlxsuite.convert.quantization import QuantSpec
from mlxsuite.data.hf_tokenizer import copy_tokenizer_files, spm_to_tokenizer_json
from mlxsuite.data.tokenizer import TOKENIZER_FILE
from mlxsuite.models import lm
from mlxsuite.platform import atomic
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
    raise UserError(f"--keep must be 0.75, 0.5 or 0.25 (the KV Prediction paper's LP models), got {keep}")


# ---- Hugging Face → this project -----------------------------------------------------------------------------------


def hf_config_to_args(config: dict, has_lm_head: Optional[bool] = None) -> tuple[lm.ModelArgs, list[str]]:
    """ModelArgs for a Hugging Face config.json of the Llama family, plus notes on what the conversion ignores."""
    mt = config.get("model_type")
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
    notes = []
    defaults = _HF_DEFAULTS[mt]
    # transformers >= 5 nests rope_theta and the scaling under rope_parameters
    params = config.get("rope_parameters") or {}
    theta = config.get("rope_theta", params.get("rope_theta", defaults["rope_theta"]))
    scaling = config.get("rope_scaling")
    if scaling is None and params.get("rope_type", params.get("type", "default")) != "default":
        scaling = {k: v for k, v in params.items() if k != "rope_theta"}
    if scaling is not None and scaling.get("rope_type", scaling.get("type", "default")) == "default":
        scaling = None
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


def source_folder(ref: str | Path) -> Path:
    """A local checkpoint folder for `ref`: a folder, a Hugging Face cache folder, or a repo id (`org/name[@rev]`,
    from the cache, else downloaded when allowed; see `mlxsuite.hub`)."""
    from mlxsuite.store.hub import resolve_repo

    return resolve_repo(str(ref)) or Path(ref).expanduser()


def _cast(w: mx.array, dtype) -> mx.array:
    return w.astype(dtype) if dtype is not None and mx.issubdtype(w.dtype, mx.floating) else w


def from_hf(
    hf_path: str | Path,
    out: str | Path,
    dtype: Optional[str] = None,
    quant: Optional[QuantSpec] = None,
    dequantize: bool = False,
    force: bool = False,
    progress: Optional[Progress] = None,
) -> Result:
    """Convert a Hugging Face or mlx-lm checkpoint (Llama, Mistral, Qwen2, Qwen3; safetensors only; a folder, a
    Hugging Face cache folder or a repo id) into a model folder of this project at `out` (a path), as
    `mlx_lm.convert` would: `dtype` for the float tensors (default: the checkpoint's torch_dtype); `quant` quantizes
    a float checkpoint; `dequantize` turns an mlx-lm quantized one (any mode, mixed bits) back into floats; an mlx-lm
    quantized checkpoint is otherwise kept as it is. The tokenizer comes along."""
    out = Path(out)
    if dtype is not None and dtype not in DTYPES:
        raise UserError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype}")
    if quant is not None and dequantize:
        raise UserError("choose either quantize (-q) or dequantize (-d), not both")
    hf_dir = source_folder(hf_path)
    tensors = scan(hf_dir)  # refuses pickle checkpoints, missing folders
    config = store.read_config(hf_dir)
    args, notes = hf_config_to_args(config, has_lm_head="lm_head.weight" in tensors)
    source_quant = quantized_layers(config, tensors) if config.get("quantization") else {}
    if source_quant and quant is not None:
        raise UserError(f"{hf_dir} is already quantized: pass -d/--dequantize to convert it to floats instead")
    if dequantize and not source_quant:
        raise UserError(f"-d/--dequantize: {hf_dir} is not quantized")
    refuse_existing(out, force)

    # what mlx-lm's sanitize drops: precomputed rotary frequencies, the head of a tied model
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
    skip = {f"{p}.{s}" for p in source_quant for s in ("scales", "biases")} if dequantize else set()
    items = [Item(k, k, v) for k, v in tensors.items() if k not in skip]
    with atomic.folder(out, force=force) as tmp:
        n, nbytes, shards = write_weights(tmp, shards_by_source(items), produce, progress)
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


# ---- this project → mlx-lm ----------------------------------------------------------------------------------------

_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM"}
# Sample text for checking a converted tokenizer against SentencePiece: whitespace runs, digits, newlines (byte
# fallback), accents, CJK, emoji, NFKC-folded characters.
TOKENIZER_CHECK_TEXT = [
    "The quick brown fox jumps over the lazy dog.",
    "  two leading spaces,   runs of spaces\tand a tab",
    "line one\nline two\n\n    indented code(x) -> y  # 1234567890",
    "naïve café, Straße, 東京, 🙂, ﬁ ligature, ① ½",
    "",
]


def mlx_lm_model_type(args: lm.ModelArgs) -> str:
    """The mlx-lm architecture whose forward pass equals `lm.Model(args)`'s; UserError if there is none.

    q/k/v biases without an o_proj bias (qwen2-style) go to `llama` with `attention_bias` and a zero o_proj bias
    rather than to `qwen2`: transformers >= 5 forces its Qwen2Tokenizer (byte-level BPE) on any model_type "qwen2"
    folder, which would re-tokenize a SentencePiece vocabulary wrongly inside mlx-lm."""
    if args.model_type not in HF_MODEL_TYPES:
        raise UserError(f"a {args.model_type} folder already opens in mlx_lm.load as it is (weights and config)")
    if args.qk_norm:
        if args.attention_bias or args.qkv_bias or args.mlp_bias or args.rope_traditional:
            raise UserError("no mlx-lm architecture has q/k-norm with biases or traditional RoPE (qwen3 has neither)")
        return "qwen3"
    return "llama"


def to_mlx_lm(model: str, out: str | Path, force: bool = False, progress: Optional[Progress] = None) -> Result:
    """Write a model of this project as a folder that `mlx_lm.load` opens as it is: mlx-lm's config (model_type
    llama, or qwen3 with q/k-norm), the same weights (names already match), and a `tokenizer.json` converted from the
    SentencePiece model, checked to encode exactly as SentencePiece does."""
    from mlxsuite.data.tokenizer import load_tokenizer

    out = Path(out)
    folder, config, args, quantized, tensors = open_model_folder(model)
    mt = mlx_lm_model_type(args)
    refuse_existing(out, force)
    tok = load_tokenizer(folder)
    if tok is None:
        raise UserError(f"{folder} has no tokenizer: mlx-lm needs one")

    out_config = args.to_dict()
    out_config.update(model_type=mt, architectures=[_ARCHITECTURES[mt]], hidden_act="silu")
    dtypes = {v.dtype for k, v in tensors.items() if v.dtype in ST_FLOAT and not k.endswith((".scales", ".biases"))}
    names = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}
    if len(dtypes) == 1 and next(iter(dtypes)) in names:
        out_config["torch_dtype"] = names[next(iter(dtypes))]
    source = SafetensorsSource(tensors)
    zero_o_bias = args.qkv_bias and not args.attention_bias  # llama's attention_bias also biases o_proj: add zeros
    if zero_o_bias:
        out_config.update(attention_bias=True, qkv_bias=False)
    bias_dtype = getattr(mx, out_config.get("torch_dtype", "float32"))

    def produce(item: Item) -> dict[str, mx.array]:
        w = source.take(item.src)
        if zero_o_bias and item.out.endswith("self_attn.o_proj.weight"):
            return {item.out: w, item.out[: -len("weight")] + "bias": mx.zeros((w.shape[0],), dtype=bias_dtype)}
        return {item.out: w}

    for key, tid in (("bos_token_id", tok.bos_id), ("eos_token_id", tok.eos_id), ("pad_token_id", -1)):
        if config.get(key) is not None:  # kept from a Hugging Face source (eos may list several ids)
            out_config[key] = config[key]
        elif tid >= 0:
            out_config[key] = tid
    if quantized:
        out_config["quantization"] = config["quantization"]
        out_config["quantization_config"] = config["quantization"]
    out_config["mlxsuite"] = {"format": 1, "exported_from": str(folder.resolve())}

    items = [Item(k, k, v) for k, v in tensors.items()]
    with atomic.folder(out, force=force) as tmp:
        if (folder / TOKENIZER_FILE).is_file():
            spm_to_tokenizer_json(folder / TOKENIZER_FILE, tmp)
            _check_tokenizer(tok, tmp)
        else:
            copy_tokenizer_files(folder, tmp)
        n, nbytes, shards = write_weights(tmp, shards_by_source(items), produce, progress)
        write_json(tmp / "config.json", out_config)
        copy_side_files(folder, tmp, ("generation_config.json",))
    return Result(out, n, nbytes, shards, out_config)


def _check_tokenizer(sp_tokenizer, folder: Path) -> None:
    from mlxsuite.data.hf_tokenizer import HFTokenizer

    hf = HFTokenizer(folder)
    for text in TOKENIZER_CHECK_TEXT:
        if hf.encode(text) != sp_tokenizer.encode(text):
            raise UserError(f"the converted tokenizer.json does not encode {text!r} as SentencePiece does")


# ---- pruning and quantization of our models ---------------------------------------------------------------------


def prune(model: str, out: str | Path, keep: float, force: bool = False, progress: Optional[Progress] = None) -> Result:
    """An LP-`keep` copy of a model (KV Prediction): the layers `pruned_layers` selects, renumbered 0..n-1, with the
    base's weights; embeddings, final norm, head and tokenizer unchanged."""
    out = Path(out)
    _keep_rule(keep)
    folder, config, args, _, tensors = open_model_folder(model)
    kept = pruned_layers(args.num_hidden_layers, keep)
    try:
        pruned_args = args.pruned(kept)  # each kept layer keeps its own shape (OpenELM)
    except ValueError as e:
        raise UserError(f"{folder}: {e}") from None
    refuse_existing(out, force)
    new_index = {old: new for new, old in enumerate(kept)}
    items = []
    for name, info in tensors.items():
        m = _LAYER.match(name)
        if m is None:
            items.append(Item(name, name, info))
        elif int(m.group(2)) in new_index:
            items.append(Item(f"{m.group(1)}.layers.{new_index[int(m.group(2))]}.{m.group(3)}", name, info))
    out_config = dict(config)
    per_layer = ("num_hidden_layers", "num_transformer_layers", "num_query_heads", "num_kv_heads", "ffn_multipliers")
    out_config.update({k: v for k, v in pruned_args.to_dict().items() if k in per_layer and k in config})
    out_config["num_hidden_layers"] = len(kept)
    block = dict(config.get("mlxsuite") or {})
    block.setdefault("format", 1)
    block["pruned"] = {
        "from": str(folder.resolve()),
        "keep": keep,
        "layers": kept,
        "base_layers": args.num_hidden_layers,
    }
    out_config["mlxsuite"] = block
    with atomic.folder(out, force=force) as tmp:
        source = SafetensorsSource(tensors)
        n, nbytes, shards = write_weights(tmp, shards_by_source(items), lambda i: {i.out: source.take(i.src)}, progress)
        write_json(tmp / "config.json", out_config)
        copy_side_files(folder, tmp)
    return Result(out, n, nbytes, shards, out_config)


def quantize(
    model: str, out: str | Path, quant: QuantSpec, force: bool = False, progress: Optional[Progress] = None
) -> Result:
    """Quantize a model of this project as `mlx_lm.convert -q` would (modes, mixed-bit recipes, the per-layer
    config entries); mlx-lm re-creates the quantized layers from config.json's "quantization"."""
    out = Path(out)
    folder, config, args, quantized, tensors = open_model_folder(model)
    if quantized:
        raise UserError(f"{folder} is already quantized")
    refuse_existing(out, force)
    notes: list[str] = []
    layers, block = quantization.plan(args, quant, notes)
    source = SafetensorsSource(tensors)

    def produce(item: Item) -> dict[str, mx.array]:
        path = item.out[: -len(".weight")]
        w = source.take(item.src)
        return quantization.quantize(path, w, layers[path]) if path in layers else {item.out: w}

    out_config = dict(config)
    out_config["quantization"] = dict(block)
    out_config["quantization_config"] = dict(block)
    items = [Item(k, k, v) for k, v in tensors.items()]
    with atomic.folder(out, force=force) as tmp:
        n, nbytes, shards = write_weights(tmp, shards_by_source(items), produce, progress)
        write_json(tmp / "config.json", out_config)
        copy_side_files(folder, tmp)
    return Result(out, n, nbytes, shards, out_config, notes)

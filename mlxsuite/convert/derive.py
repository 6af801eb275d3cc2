"""Models of this project turned into new model folders: out to mlx-lm (`to_mlx_lm`), layer-pruned (`prune`, KV
Prediction's LP auxiliaries) and quantized (`quantize`). Each takes a model reference (resolved by
`mlxsuite.store.refs`) and runs the checkpoint pipeline of `mlxsuite.convert.checkpoint`: every tensor checked
against the model before anything is written, shards streamed into a temporary folder renamed when complete.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import mlx.core as mx

from mlxsuite import store
from mlxsuite.convert import quantization
from mlxsuite.convert.checkpoint import (
    ST_FLOAT,
    Item,
    Result,
    SafetensorsSource,
    TensorInfo,
    check_tensors,
    copy_side_files,
    expected_shapes,
    quantized_layers,
    read_config,
    refuse_existing,
    scan,
    shards_by_source,
    write_json,
    write_shards,
)
from mlxsuite.convert.hf import _LAYER, HF_MODEL_TYPES, TOKENIZER_CHECK_TEXT, _keep_rule, pruned_layers
from mlxsuite.convert.quantization import QuantSpec
from mlxsuite.data.hf_tokenizer import HFTokenizer, copy_tokenizer_files, spm_to_tokenizer_json
from mlxsuite.data.tokenizer import TOKENIZER_FILE, load_tokenizer
from mlxsuite.models import lm
from mlxsuite.platform import ProgressCallback, atomic
from mlxsuite.platform.errors import UserError
from mlxsuite.store.refs import resolve

_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM"}


@dataclass
class ModelFolder:
    """A model folder of this project, checked against its config."""

    folder: Path
    config: dict
    args: lm.ModelArgs
    quantized: dict[str, dict]  # per quantized layer: its group size, bits and mode
    tensors: dict[str, TensorInfo]


def open_model_folder(name_or_path: str) -> ModelFolder:
    """A model folder of this project by reference, every tensor checked against its config."""
    folder = resolve(name_or_path)
    config = read_config(folder)
    kind = store.kind_of(config, folder)
    if kind != "lm":
        aux = f": its auxiliary is the model folder {folder / store.AUX_DIR}" if kind == store.KVP_TYPE else ""
        raise UserError(f"{folder} is {store.KINDS[kind]}, not a language model{aux}")
    try:
        args = lm.ModelArgs.from_dict(config)
    except (TypeError, ValueError) as e:
        raise UserError(f"{folder}/config.json does not describe a model: {e}") from None
    tensors = scan(folder)
    quantized = quantized_layers(config, tensors) if config.get("quantization") else {}
    found = {k: v.shape for k, v in tensors.items()}
    if args.tie_word_embeddings:
        found.pop("lm_head.weight", None)
    check_tensors(found, expected_shapes(args, quantized), str(folder))
    return ModelFolder(folder, config, args, quantized, {k: v for k, v in tensors.items() if k in found})


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


def to_mlx_lm(model: str, out: str | Path, force: bool = False, progress: Optional[ProgressCallback] = None) -> Result:
    """Write a model of this project as a folder that `mlx_lm.load` opens as it is: mlx-lm's config (model_type
    llama, or qwen3 with q/k-norm), the same weights (names already match), and a `tokenizer.json` converted from the
    SentencePiece model, checked to encode exactly as SentencePiece does."""
    out = Path(out)
    src = open_model_folder(model)
    folder, config, args, quantized, tensors = src.folder, src.config, src.args, src.quantized, src.tensors
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
        n, nbytes, shards = write_shards(tmp, shards_by_source(items), produce, progress)
        write_json(tmp / "config.json", out_config)
        copy_side_files(folder, tmp, ("generation_config.json",))
    return Result(out, n, nbytes, shards, out_config)


def _check_tokenizer(sp_tokenizer, folder: Path) -> None:
    hf = HFTokenizer(folder)
    for text in TOKENIZER_CHECK_TEXT:
        if hf.encode(text) != sp_tokenizer.encode(text):
            raise UserError(f"the converted tokenizer.json does not encode {text!r} as SentencePiece does")


# ---- pruning and quantization of our models ---------------------------------------------------------------------


def prune(
    model: str, out: str | Path, keep: float, force: bool = False, progress: Optional[ProgressCallback] = None
) -> Result:
    """An LP-`keep` copy of a model (KV Prediction): the layers `pruned_layers` selects, renumbered 0..n-1, with the
    base's weights; embeddings, final norm, head and tokenizer unchanged."""
    out = Path(out)
    _keep_rule(keep)
    src = open_model_folder(model)
    folder, config, args, tensors = src.folder, src.config, src.args, src.tensors
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
        n, nbytes, shards = write_shards(tmp, shards_by_source(items), lambda i: {i.out: source.take(i.src)}, progress)
        write_json(tmp / "config.json", out_config)
        copy_side_files(folder, tmp)
    return Result(out, n, nbytes, shards, out_config)


def quantize(
    model: str, out: str | Path, quant: QuantSpec, force: bool = False, progress: Optional[ProgressCallback] = None
) -> Result:
    """Quantize a model of this project as `mlx_lm.convert -q` would (modes, mixed-bit recipes, the per-layer
    config entries); mlx-lm re-creates the quantized layers from config.json's "quantization"."""
    out = Path(out)
    src = open_model_folder(model)
    folder, config, args, quantized, tensors = src.folder, src.config, src.args, src.quantized, src.tensors
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
        n, nbytes, shards = write_shards(tmp, shards_by_source(items), produce, progress)
        write_json(tmp / "config.json", out_config)
        copy_side_files(folder, tmp)
    return Result(out, n, nbytes, shards, out_config, notes)

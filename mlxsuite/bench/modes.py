"""The modes `mlxsuite bench ttft` measures. A mode is one way to produce the first token: `run(tokens, cache,
decode)` yields the first token ids (B,), lazy is fine, then `decode` more token ids (batch 1); plus the FLOPs it
spends, and (optionally) how to make a prompt cache holding a prefix. `base` is our prefill, `mlx-lm` is mlx-lm's
`generate_step` on the same weights; with a KV Prediction pair (`Setup.kvp`, whose base is
`Setup.model`) `aux` is the auxiliary alone (prefilled exactly as the base) and `kvp` is KV Prediction's prompt
step (aux on N−1 tokens, predictor per chunk, base on the last token), which decodes with the base alone.
`llama.cpp` runs the model's GGUF file through llama-cpp-python (`bench/llama_cpp.py`). More modes plug in with
`register_mode` (benchmarks/ttft_vs_mlx_lm.py adds two).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import mlx.core as mx

from mlxsuite import store
from mlxsuite.generate import default_prefill_step, generate_tokens, prefill, sample
from mlxsuite.kvp.recipe import load_pair, prompt_fill
from mlxsuite.models import flops, lm
from mlxsuite.models.kv_prediction import KVPredictionModel
from mlxsuite.models.lm import Model
from mlxsuite.platform.errors import UserError


@dataclass
class Setup:
    """What a mode builder gets: the model under test and the settings shared by all modes."""

    model: Model
    prefill_step: Optional[int]  # None: generate.default_prefill_step of each prompt length
    kvp: Optional[KVPredictionModel] = None  # a KV Prediction pair on `model` (the aux and kvp modes)
    name: str = "model"  # how the report names the model
    tokenizer: Any = None  # times tokenization of the random prompts' text when given
    context: int = 0  # the most tokens a trial holds (prompt + decode); 0: the model's context
    gguf: Optional[str] = None  # the model's GGUF file (the llama.cpp mode runs it)


Run = Callable[[mx.array, Optional[list], int], Iterator]


@dataclass
class Mode:
    name: str
    run: Run  # (tokens (B, n) not in the cache, prompt cache or None, decode) -> first ids (B,), then `decode` ids
    flops: Callable[[int, int, int], int]  # (prompt_tokens, batch, cached_tokens) -> FLOPs before the first token
    max_batch: Optional[int] = None  # None: any batch size
    prefix_cache: Optional[Callable[[mx.array], list]] = None  # tokens (B, P) -> a prompt cache holding them
    info: dict = field(default_factory=dict)  # what the report states about the mode (e.g. llama.cpp's threads)
    mlx_memory: bool = True  # False: it does not allocate through MLX (no peak memory to report)


ModeBuilder = Callable[[Setup], Mode]
MODES: dict[str, ModeBuilder] = {}
KVP_MODES = ("aux", "kvp")  # need a KV Prediction pair: Setup.kvp
REFERENCE_MODES = {"mlx-lm": "mlx_lm", "llama.cpp": "llama_cpp"}  # other runtimes: the report's ratios against them


REQUIREMENTS: dict[str, Callable[[], Any]] = {}  # mode name -> a check that raises UserError when it cannot run


def register_mode(name: str, builder: ModeBuilder, requirement: Optional[Callable[[], Any]] = None) -> None:
    MODES[name] = builder
    if requirement is not None:
        REQUIREMENTS[name] = requirement


def check_mode_names(names: list[str], kvp: bool = False) -> None:
    """Unknown mode names are errors, and so are aux/kvp without a KV Prediction pair (`kvp`)."""
    if not names:
        raise UserError("no modes to measure")
    for name in names:
        if name not in MODES:
            raise UserError(f"unknown mode {name!r}: choose from {', '.join(MODES)}")
        if name in REQUIREMENTS:
            REQUIREMENTS[name]()
        if name in KVP_MODES and not kvp:
            raise UserError(
                f"mode {name!r} needs a KV Prediction pair: add `kvp` DIR (a folder from `mlxsuite kvp train`)"
            )


def build_modes(names: list[str], setup: Setup) -> list[Mode]:
    """Mode objects for `names`, in order, without duplicates."""
    check_mode_names(names, kvp=setup.kvp is not None)
    return [MODES[name](setup) for name in dict.fromkeys(names)]


# ---- modes --------------------------------------------------------------------------------------------------


def prompt_flops(model) -> Callable[[int, int, int], float]:
    """FLOPs of a forward over a prompt of T tokens × B whose first P are already cached."""
    return lambda T, B, P: B * flops.forward(model.args, T - P, P)


def prefill_mode(
    name: str,
    model: Model,
    step: int,
    start: Optional[Callable[[], tuple]] = None,
    count: Optional[Callable[[int, int, int], int]] = None,
) -> Mode:
    """A mode built on the one prefill: `start()` gives (prompt cache, fill) (default: a new cache of `model`,
    the model's forward); the first token is sampled from the prefill's logits and `decode` more come from
    `generate_tokens` continuing the cache with `model`. Without `start` the mode also continues a prompt cache
    holding a prefix, made as mlx_lm.cache_prompt makes one (the prefill over it, every token in the cache)."""

    def run(tokens: mx.array, cache: Optional[list], decode: int) -> Iterator:
        fill = None
        if cache is None:
            cache, fill = start() if start is not None else (model.make_cache(), None)
        first = sample(prefill(model, tokens, cache, step, fill))
        yield first
        if decode:
            yield from generate_tokens(model, first, decode, cache=cache)

    def prefix_cache(tokens: mx.array) -> list:
        cache = model.make_cache()
        mx.eval(prefill(model, tokens, cache, step), [c.keys_and_values() for c in cache])
        return cache

    count = count or prompt_flops(model)
    return Mode(name, run, count, prefix_cache=None if start is not None else prefix_cache)


def _base_mode(setup: Setup) -> Mode:
    return prefill_mode("base", setup.model, setup.prefill_step)


def mlx_lm_model(model: Model):
    """mlx-lm's own model class holding the same weights (shared arrays, no copy): its class of the family, for
    llama-family models llama (qwen3 with q/k-norm); a model already running through mlx-lm's class is itself."""
    import importlib

    import mlx.nn as nn
    from mlx.utils import tree_flatten
    from mlx_lm.models import llama, qwen3

    from mlxsuite.models.lm import FAMILIES
    from mlxsuite.models.mlx_lm_class import MlxLmClass

    if isinstance(model, MlxLmClass):
        return model.inner
    args = model.args
    config = args.to_dict()
    if args.model_type in ("llama", "mistral", "qwen2", "qwen3") or args.model_type not in FAMILIES:
        arch = qwen3 if args.qk_norm else llama
        if args.qk_norm:
            config["model_type"] = "qwen3"
    else:
        arch = importlib.import_module(f"mlx_lm.models.{FAMILIES[args.model_type][0]}")
    ref = arch.Model(arch.ModelArgs.from_dict(config))
    weights = dict(tree_flatten(model.parameters()))
    quantized = [m for _, m in model.named_modules() if isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding))]
    if quantized:
        q = quantized[0]
        nn.quantize(ref, group_size=q.group_size, bits=q.bits, class_predicate=lambda p, m: f"{p}.scales" in weights)
    try:
        sanitize = getattr(ref, "sanitize", lambda w: w)  # gemma2, openelm have none
        ref.load_weights(list(sanitize(weights).items()), strict=True)
    except ValueError as e:
        raise UserError(
            f"the weights do not load into mlx-lm's {arch.__name__.rsplit('.', 1)[-1]} model: {e}"
        ) from None
    ref.eval()
    return ref


def _mlx_lm_mode(setup: Setup) -> Mode:
    from mlx_lm.generate import generate_step
    from mlx_lm.models.cache import make_prompt_cache

    ref, step = mlx_lm_model(setup.model), setup.prefill_step
    # mlx-lm's own stream is bound to the device current at its import; the default stream also lets the harness's
    # mx.synchronize() drain the decode step generate_step schedules before returning the first token.
    stream = mx.default_stream(mx.default_device())

    def steps(tokens: mx.array, cache: list, max_tokens: int):
        return generate_step(
            tokens[0],
            ref,
            stream=stream,
            max_tokens=max_tokens,
            prompt_cache=cache,
            prefill_step_size=step or default_prefill_step(tokens.shape[1]),
        )

    def run(tokens: mx.array, cache: Optional[list], decode: int) -> Iterator:
        gen = steps(tokens, make_prompt_cache(ref) if cache is None else cache, 1 + decode)
        token, _ = next(gen)
        yield mx.array([token])
        for token, _ in gen:
            yield token

    def prefix_cache(tokens: mx.array) -> list:  # what mlx_lm.cache_prompt does before saving the cache
        cache = make_prompt_cache(ref)
        for _ in steps(tokens, cache, 0):
            pass
        mx.eval([c.keys_and_values() for c in cache])
        return cache

    return Mode("mlx-lm", run, prompt_flops(setup.model), max_batch=1, prefix_cache=prefix_cache)


def _aux_mode(setup: Setup) -> Mode:
    """The auxiliary alone, prefilled exactly as the base is."""
    return prefill_mode("aux", setup.kvp.auxiliary, setup.prefill_step)


def _kvp_mode(setup: Setup) -> Mode:
    """KV Prediction's prompt step through the one prefill (kvp.prompt_fill), then the base decodes alone. Its
    fill starts from empty caches (the auxiliary's and the base's), so it takes no prefix cache."""
    pair = setup.kvp
    return prefill_mode(
        "kvp",
        pair.base,
        setup.prefill_step,
        start=lambda: prompt_fill(pair),
        count=lambda T, B, P: flops.kvp_prefill(pair, T, B),
    )


register_mode("base", _base_mode)
register_mode("mlx-lm", _mlx_lm_mode)
register_mode("aux", _aux_mode)
register_mode("kvp", _kvp_mode)


def weights_summary(model) -> dict:
    """llama-bench's `size` and `type` of a loaded model: its weights in GB (10^9 bytes) and their format as it
    runs (`q4 g64` for affine 4-bit in groups of 64, `q4/q6 g64` for a mixed recipe, else the float dtype); and
    what runs it (this project's family or mlx-lm's own class)."""
    import mlx.nn as nn
    from mlx.utils import tree_flatten

    from mlxsuite.models.mlx_lm_class import implementation

    size = sum(v.nbytes for _, v in tree_flatten(model.parameters())) / 1e9
    quantized = sorted(
        {
            (m.bits, m.group_size)
            for _, m in model.named_modules()
            if isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding))
        }
    )
    if quantized:
        kind = "/".join(f"q{b}" for b in sorted({b for b, _ in quantized}))
        kind += " " + "/".join(f"g{g}" for g in sorted({g for _, g in quantized}))
    else:
        kind = {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}.get(
            str(model.dtype).replace("mlx.core.", ""), "?"
        )
    return {"size_gb": size, "type": kind, "implementation": implementation(model)}


# ---- the models under test ------------------------------------------------------------------------------------

PRESET_VOCAB = 4096  # a preset's vocabulary size unless given


def open_setup(
    name: str, kvp: Optional[str], vocab_size: Optional[int], dtype, seed: int, prefill_step: Optional[int]
) -> tuple[Setup, str, list[str]]:
    """(the setup for the model `name`, how to describe it, notes from loading it): a model folder or store name
    with its tokenizer (loaded for inference), or a preset with random weights; with `kvp`, the pair in that folder,
    refused unless its base is `name` (the base mode then times the pair's base)."""
    if kvp is not None:
        pair, tokenizer, described = _open_pair(name, kvp, vocab_size, dtype)
        return Setup(pair.base, prefill_step, pair, name=name, tokenizer=tokenizer), described, []
    try:
        folder = store.resolve(name)
    except UserError as e:
        if name not in lm.PRESETS:
            if Path(name).expanduser().exists():
                raise
            raise UserError(f"{e}; or name a preset: {', '.join(lm.PRESETS)}") from None
        V = vocab_size or PRESET_VOCAB
        model = lm.build(lm.preset_args(name, V), seed=seed, dtype=dtype)
        model.eval()
        return Setup(model, prefill_step, name=name), f"preset {name}, random weights, V={V}", []
    if vocab_size is not None:
        raise UserError(f"`vocab_size` applies to presets only; {folder} has its own vocabulary")
    loaded = store.load(str(folder), "lm", dtype=dtype, dequantize=True)
    described = Path(name).name if name.lower().endswith(".gguf") else str(folder)
    return Setup(loaded.model, prefill_step, name=name, tokenizer=loaded.tokenizer), described, loaded.notes


def _open_pair(model: str, kvp: str, vocab_size: Optional[int], dtype):
    if vocab_size is not None:
        raise UserError("`vocab_size` applies to presets only, not with `kvp`")
    try:
        store.resolve(model)
    except UserError:
        if model in lm.PRESETS:
            raise UserError(
                f"`kvp` needs the pair's base model folder or store name as MODEL, not the preset {model!r}"
            ) from None
        raise
    stored = load_pair(kvp, expect_base=model)
    if dtype is not None:
        stored.pair.set_dtype(dtype)
        mx.eval(stored.pair.parameters())
    aux = stored.config["aux"]
    described = f"{model} with KV Prediction {stored.folder.name} ({aux.get('kind', '?')}"
    described += f"-{aux['keep']:.2f})" if "keep" in aux else ")"
    return stored.pair, stored.tokenizer, described

"""The one prefill and the one decode loop, in the manner of mlx-lm's `generate_step` with a `prompt_cache`.

Prefill writes the prompt into a prompt cache (a list of per-layer caches from `model.make_cache()`), in chunks of
`prefill_step` tokens, evaluating only the cache after each chunk (logits of prompt positions are never computed);
the last chunk gives the first token's logits from its last position alone (`last_logits`), where the model has it;
otherwise (mlx-lm's classes, a plug-in fill) the last prompt token goes through the model on its own. How a chunk
enters the cache is a plug-in, `fill`: by default the model's own forward; KV Prediction plugs in its auxiliary
model and predictor, which write predicted keys and values into the base's cache (`mlxsuite.kvp.prompt_fill`).
Generation takes a prompt cache, so a cache that already holds a prefix (a saved prompt, KV Prediction's predicted
prefix) continues with the rest of the prompt.

DEFAULT_PREFILL_STEP: on the CPU, benchmarks/prefill_step.py (presets small and base, 512/1024/2048 tokens, steps
64-2048, two runs on 2 shared cores at load averages 4 and 7-11) gave 256 the best score in both runs (geometric
mean of time / best time: 1.005 and 1.038; 128: 1.084 and 1.047; 512: 1.139 and 1.127; mlx-lm's 2048: 1.52 and
1.72); 256 was within 4% of the best in 10 of the 12 configurations and within 12% in all. Smaller chunks win on
the CPU because the attention is unfused (the scores are chunk × context). Since the attention runs in blocks
(models/kernels.py), prompts above LONG_PROMPT_CPU[0] tokens take chunks of 128 on the CPU: on SmolLM2 (one BLAS
thread, paired in one process) 128 against 256 took 0.90-0.92× the time at 1,536 and 2,048 tokens and 1.02-1.06×
at 1,024 (BENCHMARKS.md, issue 26). On a GPU (not measured here) mlx-lm's 2048 stays: users report larger chunks
faster on Apple GPUs (lmstudio-js #506). Where the native attention runs the CPU's attention (models/attention.c:
scores a block at a time in cache, whatever the chunk), larger chunks are faster too and the CPU takes 2048 as well:
on SmolLM2, paired, 2048 against 256 took 0.89-0.95× the time at 512-2,048 tokens with one BLAS thread and
0.75-0.81× with two (BENCHMARKS.md, issue 26, fourth session).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Optional

import mlx.core as mx
from mlx_lm.models.cache import KVCache

from mlxsuite.models import native_attention
from mlxsuite.platform.errors import UserError

DEFAULT_PREFILL_STEP = {"cpu": 256, "gpu": 2048}
LONG_PROMPT_CPU = (1024, 128)  # above this many prompt tokens, this step on the CPU

# A fill writes a chunk (B, n) of prompt tokens into the prompt cache and returns what to evaluate; it may carry
# `caches`, other prompt caches it writes (KV Prediction's auxiliary's), which the prefill reserves room in too.
Fill = Callable[[mx.array], list]
Processor = Callable[[mx.array], mx.array]  # logits (B, V) → logits, before sampling


def default_prefill_step(prompt_tokens: int = 0) -> int:
    """The chunk size of a prefill of `prompt_tokens` on the default device (the CPU's with the native attention
    as a GPU's)."""
    if mx.default_device().type != mx.DeviceType.cpu or native_attention.available():
        return DEFAULT_PREFILL_STEP["gpu"]
    return LONG_PROMPT_CPU[1] if prompt_tokens > LONG_PROMPT_CPU[0] else DEFAULT_PREFILL_STEP["cpu"]


def model_fill(model, cache: list) -> Fill:
    """The default fill: the model's forward on the chunk. Only the cache is evaluated, so MLX never computes the
    logits, nor the last layer's attention and MLP (only the hidden state needs them)."""

    def fill(chunk: mx.array) -> list:
        model(chunk, cache)
        return [c.state for c in cache]

    return fill


def reserve(cache: list, n: int) -> list:
    """Let every plain KVCache of `cache` take room for `n` more tokens in one allocation at its next write: mlx-lm's
    grows 256 positions at a time, copying all it holds each time, which is quadratic in a long prompt (at 2,048
    tokens on SmolLM2 the copies cost more than KV Prediction's predictor). Returns the caches to `release`."""
    grown = [c for c in cache if type(c) is KVCache]
    for c in grown:
        c.step = max(KVCache.step, -(-n // KVCache.step) * KVCache.step)
    return grown


def release(grown: list) -> None:
    """Back to mlx-lm's growth (decode adds 256 positions at a time, not a prompt's worth)."""
    for c in grown:
        c.__dict__.pop("step", None)


@contextmanager
def reserved(cache: list, n: int) -> Iterator[None]:
    """`reserve` for the block, `release` after it, whatever happens inside."""
    grown = reserve(cache, n)
    try:
        yield
    finally:
        release(grown)


def prefill(
    model, tokens: mx.array, cache: list, prefill_step: Optional[int] = None, fill: Optional[Fill] = None
) -> mx.array:
    """Write `tokens` (B, L) into `cache` in chunks of `prefill_step` (default: `default_prefill_step(L)`) and
    return the last token's logits (B, V):
    with the model's own forward, the last chunk through `model.last_logits`; with a plug-in `fill` (or a model
    without `last_logits`), all but the last token through `fill`, the last through the model."""
    step = prefill_step or default_prefill_step(tokens.shape[-1])
    if step < 1:
        raise ValueError(f"prefill_step must be positive, got {step}")
    if tokens.ndim == 1:
        tokens = tokens[None]
    L = tokens.shape[1]
    if L == 0:
        raise ValueError("empty prompt")
    with reserved([*cache, *getattr(fill, "caches", ())], L):
        if fill is None and hasattr(model, "last_logits"):
            # The model's own forward: the last chunk (with the last token) goes through the model once and only
            # its last position reaches the head, rather than the weights being read once more for one token.
            fill, last = model_fill(model, cache), (L - 1) // step * step
            for start in range(0, last, step):
                mx.eval(fill(tokens[:, start : start + step]))
            return model.last_logits(tokens[:, last:], cache)
        fill = fill or model_fill(model, cache)
        for start in range(0, L - 1, step):
            mx.eval(fill(tokens[:, start : min(start + step, L - 1)]))
        return model(tokens[:, -1:], cache)[:, -1]


def copy_cache(cache: list) -> list:
    """A prompt cache with the same contents in new arrays (updates of the copy never reach the original); a
    rotating cache keeps its window and position (its attributes are copied, its arrays duplicated)."""
    out = []
    for c in cache:
        new = type(c).__new__(type(c))
        new.__dict__.update(c.__dict__)
        new.state = tuple(mx.array(a) if isinstance(a, mx.array) else a for a in c.state)  # KVCache's has its offset
        out.append(new)
    mx.eval([[a for a in c.state if isinstance(a, mx.array)] for c in out])
    return out


def sample(logits: mx.array, temperature: float = 0.0, top_k: int = 0) -> mx.array:
    """Greedy at temperature 0, else softmax sampling (optionally restricted to the top k logits)."""
    if temperature <= 0:
        return mx.argmax(logits, axis=-1)
    logits = logits / temperature
    if 0 < top_k < logits.shape[-1]:
        kth = mx.sort(logits, axis=-1)[..., -top_k][..., None]
        logits = mx.where(logits < kth, -mx.inf, logits)
    return mx.random.categorical(logits)


Sampler = Callable[[mx.array], mx.array]  # log-probabilities (B, V) → token ids (B,): mlx-lm's `make_sampler`
LogitsProcessor = Callable[[mx.array, mx.array], mx.array]  # (ids so far, logits) → logits: `make_logits_processors`


def generate_step(
    model,
    prompt: mx.array,
    max_tokens: int,
    temperature: float = 0.0,
    top_k: int = 0,
    *,
    cache: Optional[list] = None,
    fill: Optional[Fill] = None,
    prefill_step: Optional[int] = None,
    processor: Optional[Processor] = None,
    sampler: Optional[Sampler] = None,
    logits_processors: Optional[list[LogitsProcessor]] = None,
) -> Iterator[mx.array]:
    """The decode loop: yield up to `max_tokens` evaluated token ids (B,) after prompts (B, T) (or one (T,)).
    `cache` is the prompt cache (default: a new one; one that already holds earlier tokens is continued by
    `prompt`); `fill` how prompt chunks enter it (`prefill`); `processor` changes the logits before each sampling
    (e.g. to restrict the vocabulary). `sampler` and `logits_processors` are mlx-lm's (`mlx_lm.sample_utils`), as
    its `generate_step` applies them: the processors see the ids so far (this prompt and the generated ones, batch
    1), the sampler the log-probabilities; without a sampler, `sample` with `temperature` and `top_k`."""
    cache = model.make_cache() if cache is None else cache
    prompt = prompt[None] if prompt.ndim == 1 else prompt
    history = prompt[0] if logits_processors else None

    def next_token(logits: mx.array) -> mx.array:
        logits = processor(logits) if processor is not None else logits
        for fn in logits_processors or ():
            logits = fn(history, logits)
        if sampler is None:
            return sample(logits, temperature, top_k)
        return sampler(logits - mx.logsumexp(logits, axis=-1, keepdims=True))

    if max_tokens < 1:
        return
    token = next_token(prefill(model, prompt, cache, prefill_step, fill))
    mx.async_eval(token)
    for i in range(max_tokens):
        if logits_processors:
            history = mx.concatenate([history, token])
        # As mlx-lm does: schedule the next step before handing this token out, so the device computes it while
        # the caller (detokenizing, printing) holds this one. The cache is then one token ahead of the caller.
        following = next_token(model(token[:, None], cache)[:, -1]) if i + 1 < max_tokens else None
        if following is not None:
            mx.async_eval(following)
        mx.eval(token)
        yield token
        token = following


def generate_tokens(
    model, prompt: mx.array, max_tokens: int, temperature: float = 0.0, top_k: int = 0, **kw
) -> Iterator[int]:
    """`generate_step` for one 1-D prompt, yielding ints."""
    for token in generate_step(model, prompt[None], max_tokens, temperature, top_k, **kw):
        yield int(token.item())


@dataclass
class Generation:
    """One answer and its numbers, as mlx-lm's `GenerationResponse` reports them, plus the time to first token."""

    text: str
    ids: list[int]  # generated ids, the stopping EOS included when there was one
    prompt_tokens: int  # tokens prefilled by this call (a prompt cache's earlier tokens not counted)
    ttft: float  # seconds from the call to the first token (prefill + first sampling)
    generation_time: float  # seconds from the first token to the last
    peak_memory: float  # GB (mx.get_peak_memory)
    finish_reason: str  # "stop" (EOS) or "length" (max tokens)

    @property
    def generation_tokens(self) -> int:
        return len(self.ids)

    @property
    def prompt_tps(self) -> float:
        return self.prompt_tokens / self.ttft if self.ttft > 0 else 0.0

    @property
    def generation_tps(self) -> float:
        n = len(self.ids) - 1  # the first token is the prompt's
        return n / self.generation_time if n > 0 and self.generation_time > 0 else 0.0

    def stats(self) -> dict:
        return {
            "prompt_tokens": self.prompt_tokens,
            "ttft_s": self.ttft,
            "prompt_tps": self.prompt_tps,
            "generation_tokens": self.generation_tokens,
            "generation_tps": self.generation_tps,
            "peak_memory_gb": self.peak_memory,
            "finish_reason": self.finish_reason,
        }


def check_context(model, n_ids: int, max_tokens: int, past: int = 0) -> None:
    context = getattr(getattr(model, "args", None), "max_position_embeddings", None)
    if context is not None and past + n_ids + max_tokens > context:
        held = f" after {past} cached" if past else ""
        raise UserError(
            f"the prompt ({n_ids} tokens{held}) and max-tokens {max_tokens} exceed the model's context "
            f"({context} tokens): shorten the prompt or generate fewer tokens"
        )


def generate_ids(
    model, tokenizer, ids: list[int], max_tokens: int = 100, on_token: Optional[Callable[[str], None]] = None, **kw
) -> Generation:
    """Generate after the prompt `ids` (continuing `cache` when given) up to EOS or `max_tokens`; `on_token`
    receives each new piece of text. Keywords of `generate_step` (cache, fill, sampler, …) pass through."""
    cache = kw.get("cache")
    check_context(model, len(ids), max_tokens, cache[0].offset if cache else 0)
    mx.reset_peak_memory()
    start = time.perf_counter()
    first = []
    out: list[int] = []

    def timed() -> Iterator[int]:
        for token in generate_tokens(model, mx.array(ids), max_tokens, **kw):
            if not first:
                first.append(time.perf_counter())
            out.append(token)
            yield token

    text = decode_stream(tokenizer, timed(), on_token, prompt_ids=ids)
    end = time.perf_counter()
    ttft = (first[0] - start) if first else end - start
    stopped = bool(out) and out[-1] in eos_ids(tokenizer)
    return Generation(
        text,
        out,
        len(ids),
        ttft,
        end - first[0] if first else 0.0,
        mx.get_peak_memory() / 1e9,
        "stop" if stopped else "length",
    )


def generate_text(
    model,
    tokenizer,
    prompt: str,
    max_tokens: int = 64,
    temperature: float = 0.0,
    top_k: int = 0,
    on_token: Optional[Callable[[str], None]] = None,
    **kw,
) -> str:
    """Decode the continuation of `prompt` (raw text, the tokenizer's own BOS rule); keywords of `generate_step`
    (cache, fill, …) pass through."""
    ids = tokenizer.encode(prompt) or [tokenizer.bos_id]
    return generate_ids(model, tokenizer, ids, max_tokens, on_token, temperature=temperature, top_k=top_k, **kw).text


def eos_ids(tokenizer) -> list[int]:
    """Every id that ends a generation (a Hugging Face tokenizer may list several)."""
    return list(getattr(tokenizer, "eos_ids", None) or [tokenizer.eos_id])


PROMPT_TAIL = 8  # prompt tokens decoded with the completion, so a word boundary at the join keeps its space


def decode_stream(
    tokenizer,
    tokens: Iterator[int],
    on_token: Optional[Callable[[str], None]] = None,
    prompt_ids: Optional[list] = None,
) -> str:
    """Decode generated ids up to EOS; `on_token` receives each new piece of text as it appears. The ids are decoded
    after the last prompt tokens and the new suffix taken: decoded alone, a first piece "▁word" would lose its
    space (SentencePiece drops a leading one)."""
    tail = list(prompt_ids or [])[-PROMPT_TAIL:]
    skip = len(tokenizer.decode(tail)) if tail else 0
    out: list[int] = []
    shown = ""
    stop = set(eos_ids(tokenizer))
    for token in tokens:
        if token in stop:
            break
        out.append(token)
        if on_token is not None:
            text = tokenizer.decode(tail + out)[skip:]
            on_token(text[len(shown) :])
            shown = text
    return tokenizer.decode(tail + out)[skip:]

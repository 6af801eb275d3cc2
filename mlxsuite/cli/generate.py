"""`mlxsuite generate`, `chat` and `cache-prompt`: mlx-lm's generate, chat and cache_prompt on this project's prefill
and decode loop (optionally with KV Prediction at prefill). Short flags keep mlx-lm's meanings: -p prompt,
-m max tokens, -v verbose."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from mlxsuite import store
from mlxsuite.chat import (
    cache_prompt_ids,
    fill_cache,
    has_chat_template,
    load_prompt_cache_file,
    prompt_ids,
    save_prompt_cache_file,
)
from mlxsuite.cli.common import err, model_argument, print_json, print_note
from mlxsuite.generate import generate_ids
from mlxsuite.kvp.recipe import load_pair, prompt_fill
from mlxsuite.platform.errors import UserError


def prompt_cache_option():
    return typer.Option(
        None,
        "--prompt-cache-file",
        help="A prompt cache (cache-prompt, mlx_lm.cache_prompt) the prompt (chat: the first message) continues.",
    )


def kvp_option():
    return typer.Option(
        None,
        "--kvp",
        help="KV Prediction folder trained for MODEL: its auxiliary and predictor fill MODEL's prompt cache, MODEL "
        "generates every token.",
    )


def temp_option():
    return typer.Option(0.0, "--temp", help="Sampling temperature; 0 is greedy.")


def top_p_option():
    return typer.Option(0.0, "--top-p", help="Nucleus sampling: keep the smallest set of probability p (0: off).")


def min_p_option():
    return typer.Option(0.0, "--min-p", help="Drop tokens below min-p times the top probability (0: off).")


def top_k_option():
    return typer.Option(0, "--top-k", help="Sample among the k most likely tokens only (0: all).")


def repetition_penalty_option():
    return typer.Option(None, "--repetition-penalty", help="Penalty (>1) on tokens of the last 20.")


def seed_option():
    return typer.Option(0, "--seed", help="Seed of the sampler.")


def system_prompt_option():
    return typer.Option(None, "--system-prompt", help="System message for the chat template.")


def template_config_option():
    return typer.Option(None, "--chat-template-config", help="JSON of extra chat-template arguments.")


def sampling_options(temp, top_p, min_p, top_k, repetition_penalty, seed):
    """mlx-lm's sampler and logits processors (`mlx_lm.sample_utils`), after checking their ranges."""
    import mlx.core as mx
    from mlx_lm.sample_utils import make_logits_processors, make_sampler

    if temp < 0:
        raise UserError(f"temperature must be >= 0, got {temp}")
    if top_k < 0:
        raise UserError(f"top-k must be >= 0 (0: all tokens), got {top_k}")
    for name, value in (("top-p", top_p), ("min-p", min_p)):
        if not 0 <= value <= 1:
            raise UserError(f"{name} must be in [0, 1], got {value}")
    if repetition_penalty is not None and repetition_penalty <= 0:
        raise UserError(f"repetition-penalty must be positive, got {repetition_penalty}")
    mx.random.seed(seed)
    return {
        "sampler": make_sampler(temp, top_p, min_p, top_k=top_k),
        "logits_processors": make_logits_processors(repetition_penalty=repetition_penalty) or None,
    }


def template_kwargs(config: Optional[str]) -> dict:
    if config is None:
        return {}
    try:
        kwargs = json.loads(config)
    except ValueError as e:
        raise UserError(f"chat-template-config is not JSON: {e}") from None
    if not isinstance(kwargs, dict):
        raise UserError("chat-template-config must be a JSON object")
    return kwargs


def load_generator(model: str, kvp: Optional[str]):
    """(model that generates, tokenizer, folder, pair or None)."""
    if kvp is not None:
        pair, tok, _, _ = load_pair(kvp, expect_base=model)
        m, folder = pair.base, store.resolve(model)
    else:
        loaded = store.load(model, "lm", dequantize=True)
        m, tok, folder, pair = loaded.model, loaded.tokenizer, loaded.folder, None
        for note in loaded.notes:
            print_note(note)
    if tok is None:
        raise UserError(f"{folder} has no tokenizer")
    return m, tok, folder, pair


def same_model(folder: Path):
    def same(named: str) -> bool:
        try:
            return store.resolve(named).resolve() == Path(folder).resolve()
        except (UserError, OSError):
            return False

    return same


def print_stats(g, cached: int = 0) -> None:
    """mlx-lm's verbose lines (prompt, generation, peak memory), with the time to first token."""
    held = f" (after {cached} cached)" if cached else ""
    err.print("==========", highlight=False)
    err.print(
        f"Prompt: {g.prompt_tokens} tokens{held}, {g.prompt_tps:.3f} tokens-per-sec, TTFT {g.ttft * 1000:.1f} ms",
        highlight=False,
    )
    err.print(f"Generation: {g.generation_tokens} tokens, {g.generation_tps:.3f} tokens-per-sec", highlight=False)
    err.print(f"Peak memory: {g.peak_memory:.3f} GB", highlight=False)


def _stream(piece: str) -> None:
    sys.stdout.write(piece)
    sys.stdout.flush()


def generate(
    model: str = model_argument(),
    prompt: Optional[str] = typer.Option(None, "--prompt", "-p", help="Prompt text ('-' reads stdin)."),
    max_tokens: int = typer.Option(100, "--max-tokens", "-m", help="Tokens to generate at most (EOS stops earlier)."),
    temp: float = temp_option(),
    top_p: float = top_p_option(),
    min_p: float = min_p_option(),
    top_k: int = top_k_option(),
    repetition_penalty: Optional[float] = repetition_penalty_option(),
    seed: int = seed_option(),
    system_prompt: Optional[str] = system_prompt_option(),
    ignore_chat_template: bool = typer.Option(
        False, "--ignore-chat-template", help="Feed the prompt raw even when the tokenizer has a template."
    ),
    chat_template_config: Optional[str] = template_config_option(),
    prompt_cache_file: Optional[Path] = prompt_cache_option(),
    allow_empty: bool = typer.Option(False, "--allow-empty", help="Generate from an empty prompt (from BOS)."),
    kvp: Optional[str] = kvp_option(),
    verbose: bool = typer.Option(
        False, "--verbose", "-v", help="After the text, on stderr: tokens, TTFT, tok/s, memory."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON document (completion and the numbers)."),
):
    """Generate an answer (chat template applied when the tokenizer has one, as mlx_lm.generate) or a raw
    continuation (echoed after its prompt). Short flags as mlx-lm's: -p prompt, -m max tokens, -v verbose."""
    prompt = sys.stdin.read() if prompt == "-" else (prompt or "")
    if max_tokens <= 0:
        raise UserError(f"max-tokens must be positive, got {max_tokens}")
    sampling = sampling_options(temp, top_p, min_p, top_k, repetition_penalty, seed)
    kwargs = template_kwargs(chat_template_config)
    if prompt_cache_file is not None and kvp is not None:
        raise UserError("a prompt cache file holds the base's own cache: it cannot be used with KV Prediction")
    empty = not prompt.strip() and not allow_empty
    if empty and not system_prompt:  # checked again below, once the tokenizer tells whether a template applies
        raise UserError("empty prompt: give one with -p (or '-' for stdin), or allow it with --allow-empty")
    m, tok, folder, pair = load_generator(model, kvp)
    use_template = has_chat_template(tok) and not ignore_chat_template
    if empty and not use_template:
        raise UserError("empty prompt: give one with -p (or '-' for stdin), or allow it with --allow-empty")
    if system_prompt is not None and not use_template:
        raise UserError("a system prompt needs a chat template (this tokenizer has none, or it is ignored)")
    cache, fill = None, None
    if prompt_cache_file is not None:
        cache, _ = load_prompt_cache_file(prompt_cache_file, m, folder, same_model(folder))
    elif pair is not None:
        cache, fill = prompt_fill(pair)
    ids = prompt_ids(tok, prompt, use_template, system_prompt, kwargs, after_cache=cache is not None and fill is None)
    if not ids:
        raise UserError("the prompt after the cached prefix is empty")
    # a raw continuation is shown after its prompt, echoed with the first token (once the input is checked)
    shown = [] if not use_template and cache is None else [True]

    def stream(piece: str) -> None:
        _stream(piece if shown else prompt + piece)
        shown.append(True)

    cached = cache[0].offset if cache else 0
    g = generate_ids(m, tok, ids, max_tokens, None if json_out else stream, cache=cache, fill=fill, **sampling)
    if json_out:
        print_json({"model": str(folder), "prompt": prompt, "completion": g.text, **g.stats()})
        return
    stream("\n")
    if verbose:
        print_stats(g, cached)


def cache_prompt(
    model: str = model_argument(),
    prompt: Optional[str] = typer.Option(None, "--prompt", "-p", help="Prompt text to cache ('-' reads stdin)."),
    out: Path = typer.Option(..., "--out", help="The .safetensors file to write (mlx-lm's prompt cache format)."),
    ignore_chat_template: bool = typer.Option(
        False, "--ignore-chat-template", help="Cache the raw text even when the tokenizer has a template."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON document (file, tokens, seconds)."),
):
    """Prefill a prompt once and save its cache (as mlx_lm.cache_prompt); generate --prompt-cache-file continues it."""
    import time

    prompt = sys.stdin.read() if prompt == "-" else (prompt or "")
    if not prompt:
        raise UserError("empty prompt: give the text to cache with -p (or '-' for stdin)")
    if out.suffix != ".safetensors":
        raise UserError(f"a prompt cache file ends in .safetensors, got {out}")
    m, tok, folder, _ = load_generator(model, None)
    ids = cache_prompt_ids(tok, prompt, has_chat_template(tok) and not ignore_chat_template)
    start = time.perf_counter()
    cache = fill_cache(m, ids)
    seconds = time.perf_counter() - start
    save_prompt_cache_file(out, cache, folder, ids, prompt)
    if json_out:
        print_json({"model": str(folder), "file": str(out), "tokens": len(ids), "prefill_s": seconds})
    else:
        print(f"wrote {out} ({len(ids)} tokens, prefill {seconds:.2f} s)")

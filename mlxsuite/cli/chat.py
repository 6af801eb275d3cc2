"""`mlxsuite chat`: a terminal conversation as `mlx_lm.chat`, whose prompt cache lives across turns."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from mlxsuite.chat import Conversation, has_chat_template, load_prompt_cache_file
from mlxsuite.cli.common import err, model_argument
from mlxsuite.cli.generate import (
    kvp_option,
    load_generator,
    min_p_option,
    print_stats,
    prompt_cache_option,
    repetition_penalty_option,
    same_model,
    sampling_options,
    seed_option,
    system_prompt_option,
    temp_option,
    template_config_option,
    template_kwargs,
    top_k_option,
    top_p_option,
)
from mlxsuite.platform.errors import UserError


def chat(
    model: str = model_argument(),
    max_tokens: int = typer.Option(256, "--max-tokens", "-m", help="Tokens per answer at most (EOS stops earlier)."),
    temp: float = temp_option(),
    top_p: float = top_p_option(),
    min_p: float = min_p_option(),
    top_k: int = top_k_option(),
    repetition_penalty: Optional[float] = repetition_penalty_option(),
    seed: int = seed_option(),
    system_prompt: Optional[str] = system_prompt_option(),
    chat_template_config: Optional[str] = template_config_option(),
    prompt_cache_file: Optional[Path] = prompt_cache_option(),
    kvp: Optional[str] = kvp_option(),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="After each answer, on stderr: tokens, TTFT, tok/s."),
):
    """Talk with a model (one line per turn; /reset starts over, /exit or Ctrl-D ends). Each turn prefills only its
    new tokens: the prompt cache is kept across turns. With --prompt-cache-file (from cache-prompt) the first
    message continues the cached text. Short flags as mlx-lm's: -m max tokens, -v verbose."""
    if prompt_cache_file is not None and kvp is not None:
        raise UserError("a prompt cache file holds the base's own cache: it cannot be used with KV Prediction")

    if max_tokens <= 0:
        raise UserError(f"max-tokens must be positive, got {max_tokens}")
    sampling = sampling_options(temp, top_p, min_p, top_k, repetition_penalty, seed)
    kwargs = template_kwargs(chat_template_config)
    m, tok, folder, pair = load_generator(model, kvp)
    if not has_chat_template(tok):
        raise UserError(f"{folder}'s tokenizer has no chat template: use generate for raw continuations")
    conversation = Conversation(m, tok, system_prompt, kwargs, pair)
    if prompt_cache_file is not None:
        conversation.start_from(*_saved_opening(prompt_cache_file, m, folder, system_prompt))
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            sys.stdout.write(">> ")
            sys.stdout.flush()
        line = sys.stdin.readline()
        query, command = line.rstrip("\r\n"), line.strip()  # the message as typed (it may continue a cached text)
        if not line or command == "/exit":
            break
        if command == "/reset":
            conversation.reset()
            err.print("conversation reset", highlight=False)
            continue
        if not command:
            continue
        generation = conversation.reply(query, max_tokens, _stream, **sampling)
        sys.stdout.write("\n")
        sys.stdout.flush()
        if verbose:
            print_stats(generation, conversation.reused)


def _saved_opening(path: Path, model, folder, system_prompt) -> tuple[str, list[int], list]:
    """(text, ids, cache) of a prompt-cache file made by cache-prompt: the opening of the first user message."""
    import json

    if system_prompt is not None:
        raise UserError("a prompt cache file opens the first user message: it cannot follow a system prompt")
    cache, metadata = load_prompt_cache_file(path, model, folder, same_model(folder))
    if "mlxsuite_prompt" not in metadata or "mlxsuite_ids" not in metadata:
        raise UserError(f"{path} does not record its prompt (mlx_lm.cache_prompt's files do not): use it with generate")
    return metadata["mlxsuite_prompt"], json.loads(metadata["mlxsuite_ids"]), cache


def _stream(piece: str) -> None:
    sys.stdout.write(piece)
    sys.stdout.flush()

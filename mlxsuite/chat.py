"""Prompts as mlx-lm builds them (chat template, system prompt), a conversation that keeps its prompt cache across
turns, and prompt-cache files in mlx-lm's format.

A prompt goes through the tokenizer's chat template when it has one (`mlx_lm.generate`'s rule), encoded without
the tokenizer's own specials (the template writes them). A `Conversation` renders the whole conversation every turn
and prefills only the ids after the longest prefix its cache already holds (the cache is trimmed back to it when the
new rendering differs, e.g. a reply that decodes and re-encodes differently), so each turn gives what one
generation over the whole conversation gives. With a KV Prediction pair the new ids go through the pair's fill (the
auxiliary first catches up on the ids it has not seen: the last prompt id and the reply, which the base decoded).

Prompt-cache files are `mlx_lm.models.cache.save_prompt_cache` files: metadata `model` (the model folder, as
`mlx_lm.generate --model` wants it) and `tokenizer_config`, plus `mlxsuite_tokens` (how many tokens the cache
holds). A file is refused when its model is another folder or its shapes do not fit the model.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Optional

import mlx.core as mx

from mlxsuite.generate import (
    Generation,
    copy_cache,
    default_prefill_step,
    generate_ids,
    model_fill,
    reserved,
)
from mlxsuite.platform import atomic
from mlxsuite.platform.errors import UserError

QUERY = "<query>"  # mlx-lm's placeholder for the part of a prompt that follows a cached prefix


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "has_chat_template", False))


def encode_plain(tokenizer, text: str, add_special_tokens: bool = True) -> list[int]:
    if add_special_tokens or not hasattr(tokenizer, "has_chat_template"):  # SentencePiece: encode adds nothing
        return tokenizer.encode(text)
    return tokenizer.encode(text, add_special_tokens=False)


def template_ids(tokenizer, messages: list[dict], template_kwargs: Optional[dict] = None, **kw) -> list[int]:
    text = tokenizer.apply_chat_template(messages, **{**(template_kwargs or {}), **kw})
    return encode_plain(tokenizer, text, add_special_tokens=False)


def prompt_ids(
    tokenizer,
    prompt: str,
    use_template: bool,
    system_prompt: Optional[str] = None,
    template_kwargs: Optional[dict] = None,
    after_cache: bool = False,
) -> list[int]:
    """The ids `mlx_lm.generate` feeds the model for `prompt`: through the chat template (with the system prompt)
    when `use_template`, else the raw text with the tokenizer's own specials (BOS). `after_cache`: the prompt
    continues a cached prefix (`cache_prompt_ids`), so only the part from the user's text on is kept."""
    if not use_template:
        ids = encode_plain(tokenizer, prompt, add_special_tokens=not after_cache)
        return ids or ([] if after_cache else [tokenizer.bos_id])
    messages = ([{"role": "system", "content": system_prompt}] if system_prompt is not None else []) + [
        {"role": "user", "content": prompt}
    ]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, **(template_kwargs or {}))
    if after_cache:  # as mlx_lm.generate: the rendering from the user's text on
        messages[-1]["content"] = QUERY
        probe = tokenizer.apply_chat_template(messages, add_generation_prompt=True, **(template_kwargs or {}))
        text = text[probe.index(QUERY) :]
    return encode_plain(tokenizer, text, add_special_tokens=False)


def cache_prompt_ids(tokenizer, prompt: str, use_template: bool) -> list[int]:
    """The ids `mlx_lm.cache_prompt` caches: the user message left open (continue_final_message) under a chat
    template, else the raw text."""
    if not use_template:
        return encode_plain(tokenizer, prompt)
    messages = [{"role": "user", "content": prompt}]
    return template_ids(tokenizer, messages, add_generation_prompt=False, continue_final_message=True)


def fill_cache(model, ids: list[int], cache: Optional[list] = None, prefill_step: Optional[int] = None) -> list:
    """Write `ids` into a prompt cache (new unless given) through the one prefill's default fill, in chunks."""
    cache = model.make_cache() if cache is None else cache
    fill, step = model_fill(model, cache), prefill_step or default_prefill_step(len(ids))
    with reserved(cache, len(ids)):
        for start in range(0, len(ids), step):
            mx.eval(fill(mx.array([ids[start : start + step]])))
    return cache


# ---- prompt-cache files ---------------------------------------------------------------------------------------


def save_prompt_cache_file(path: Path, cache: list, folder: Path, ids: list[int], prompt: str) -> Path:
    from mlx_lm.models.cache import save_prompt_cache

    metadata = {
        "model": str(folder),
        "tokenizer_config": json.dumps({}),
        "mlxsuite_tokens": str(len(ids)),
        "mlxsuite_ids": json.dumps(ids),  # what the cache holds: a chat continues it (`Conversation`)
        "mlxsuite_prompt": prompt,
    }
    return atomic.write_file(Path(path), lambda tmp: save_prompt_cache(str(tmp), cache, metadata))


def load_prompt_cache_file(path: Path, model, folder: Path, same_model: Callable[[str], bool]) -> tuple[list, dict]:
    """The cache in `path` for `model` (stored in `folder`) and the file's metadata; `same_model(name)` tells
    whether the model the file names is this one. Refused in one line: not a prompt-cache file, another model's, or
    shapes that do not fit."""
    from mlx_lm.models.cache import load_prompt_cache

    path = Path(path)
    if not path.is_file():
        raise UserError(f"prompt cache file not found: {path}")
    try:
        cache, metadata = load_prompt_cache(str(path), return_metadata=True)
    except Exception as e:  # mx.load and tree_unflatten raise bare errors on other files
        raise UserError(f"{path} is not a prompt cache file: {str(e).splitlines()[0] if str(e) else e}") from None
    named = metadata.get("model")
    if named is None or not same_model(named):
        raise UserError(f"{path} is a prompt cache of the model {named}, not of {folder}")
    args = model.args
    want = (args.num_key_value_heads, args.head_dim)
    for c in cache:
        keys = getattr(c, "keys", None)
        if keys is None or tuple(keys.shape[i] for i in (1, 3)) != want:
            raise UserError(f"{path} does not fit {folder}: its cache has other layer shapes")
    if len(cache) != len(model.layers):
        raise UserError(f"{path} has {len(cache)} layers of cache, {folder} has {len(model.layers)} layers")
    return cache, metadata


# ---- conversation ---------------------------------------------------------------------------------------------


class Conversation:
    """A chat whose prompt cache lives across turns (see the module's docstring). `pair`: a KV Prediction pair
    whose base is `model`; new prompt ids are then written by its auxiliary and predictor."""

    def __init__(self, model, tokenizer, system_prompt=None, template_kwargs=None, pair=None, prefill_step=None):
        self.model, self.tokenizer, self.pair = model, tokenizer, pair
        self.system_prompt, self.template_kwargs, self.prefill_step = system_prompt, template_kwargs, prefill_step
        self.prefix: Optional[tuple[str, list[int], list]] = None
        self.reset()

    def start_from(self, text: str, ids: list[int], cache: list) -> None:
        """Begin (and begin again after each reset) from a saved prompt cache holding `ids`, the opening of the
        first user message `text` (`cache_prompt_ids`): the first message continues it."""
        self.prefix = (text, list(ids), cache)
        self.reset()

    def reset(self) -> None:
        self.messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt is not None else []
        self.cache = self.model.make_cache()
        self.aux_cache = self.pair.auxiliary.make_cache() if self.pair is not None else None
        self.cached: list[int] = []  # the ids whose keys and values self.cache holds, in order
        self.reused = 0  # ids of the last turn's prompt that were already in the cache
        self.opening = ""  # text the next user message continues
        if self.prefix is not None:
            self.opening, self.cached, self.cache = self.prefix[0], list(self.prefix[1]), copy_cache(self.prefix[2])

    def reply(self, text: str, max_tokens: int, on_token=None, **kw) -> Generation:
        """Answer `text`: prefill the new ids of the rendered conversation, generate, keep the reply."""
        messages = self.messages + [{"role": "user", "content": self.opening + text}]
        ids = template_ids(self.tokenizer, messages, self.template_kwargs, add_generation_prompt=True)
        keep = 0
        while keep < min(len(self.cached), len(ids) - 1) and self.cached[keep] == ids[keep]:
            keep += 1
        _trim(self.cache, keep)
        fill = self._kvp_fill(ids, keep) if self.pair is not None else None
        generation = generate_ids(
            self.model, self.tokenizer, ids[keep:], max_tokens, on_token, cache=self.cache, fill=fill,
            prefill_step=self.prefill_step, **kw
        )  # fmt: skip
        self.cached = (ids + generation.ids)[: self.cache[0].offset]
        self.messages = messages + [{"role": "assistant", "content": generation.text}]
        self.reused, self.opening = keep, ""
        return generation

    def _kvp_fill(self, ids: list[int], keep: int):
        """The pair's fill over the base cache, after the auxiliary has caught up on ids[:keep] (it never saw the
        ids the base decoded, nor the last id of each prompt)."""
        _trim(self.aux_cache, min(self.aux_cache[0].offset, keep))
        seen = self.aux_cache[0].offset
        if seen < keep:
            fill_cache(self.pair.auxiliary, ids[seen:keep], self.aux_cache, self.prefill_step)
        pair, aux_cache, base_cache, stacked = self.pair, self.aux_cache, self.cache, self.pair.predictor.stacked()

        def fill(chunk: mx.array) -> list:
            return pair.fill(chunk, aux_cache, base_cache, stacked)  # the predictor batched across layers

        fill.caches = aux_cache  # room reserved in the auxiliary's cache too
        return fill


def _trim(cache: list, keep: int) -> None:
    for c in cache:
        if c.offset > keep:
            c.trim(c.offset - keep)

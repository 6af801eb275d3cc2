"""Hugging Face tokenizers (`tokenizer.json`) behind the same interface as `data.tokenizer.Tokenizer`.

Models converted from Hugging Face keep their own tokenizer: `tokenizer.json` (read with the `tokenizers` library, no
transformers and no remote code) plus `tokenizer_config.json` for the special tokens. `encode` applies the tokenizer's
own post-processor (the BOS a Llama tokenizer adds, nothing for Qwen), as transformers and mlx-lm do, so prompts reach
the model the way it was trained; `decode` drops special tokens, as SentencePiece does for control ids.

`spm_to_tokenizer_json` goes the other way: a SentencePiece model trained here becomes a `tokenizer.json` that encodes
exactly as SentencePiece does, so mlx-lm and transformers can open models trained in this project.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from mlxsuite.platform import atomic
from mlxsuite.platform.errors import UserError

TOKENIZER_JSON = "tokenizer.json"
# Files that make up a Hugging Face tokenizer (no tokenizer.model: a folder with both would load as SentencePiece).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
)


def _read_json(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise UserError(f"{path} is not valid JSON: {e}") from None
    return data if isinstance(data, dict) else {}


def _token_content(tok) -> str | None:
    """tokenizer_config.json writes special tokens as a string or as an AddedToken dict."""
    if isinstance(tok, dict):
        return tok.get("content")
    return tok if isinstance(tok, str) else None


def _first_line(e: Exception) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__


class HFTokenizer:
    """A `tokenizer.json` tokenizer with the interface of `data.tokenizer.Tokenizer`."""

    def __init__(self, folder: str | Path):
        from tokenizers import Tokenizer as _Tokenizer

        folder = Path(folder)
        self.path = folder / TOKENIZER_JSON
        try:
            self.tk = _Tokenizer.from_file(str(self.path))
        except Exception as e:  # the tokenizers library raises a bare Exception on bad files
            raise UserError(f"cannot read tokenizer {self.path}: {str(e).splitlines()[0] if str(e) else e}") from None
        self.config = _read_json(folder / "tokenizer_config.json")
        model_config = _read_json(folder / "config.json")
        self._bos = self._special_id("bos_token", model_config.get("bos_token_id"))
        eos = self._special_id("eos_token", None)
        ids = [eos] if eos >= 0 else []
        for cfg in (model_config, _read_json(folder / "generation_config.json")):
            more = cfg.get("eos_token_id")
            more = [more] if isinstance(more, int) else more if isinstance(more, list) else []
            ids += [i for i in more if isinstance(i, int) and i not in ids]
        self.eos_ids: list[int] = ids

    def _special_id(self, key: str, fallback) -> int:
        content = _token_content(self.config.get(key))
        if content is not None:
            tid = self.tk.token_to_id(content)
            if tid is not None:
                return tid
        if isinstance(fallback, list):
            fallback = fallback[0] if fallback else None
        return fallback if isinstance(fallback, int) else -1

    @property
    def vocab_size(self) -> int:
        return self.tk.get_vocab_size(with_added_tokens=True)

    @property
    def bos_id(self) -> int:
        return self._bos

    @property
    def eos_id(self) -> int:
        """The first end-of-sequence id (tokenizer_config's eos_token, else config.json's eos_token_id); -1 if none.
        `eos_ids` lists all of them (some models stop on several)."""
        return self.eos_ids[0] if self.eos_ids else -1

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """`add_special_tokens=False` skips the post-processor (no BOS): a chat template writes its own specials."""
        return self.tk.encode(text, add_special_tokens=add_special_tokens).ids

    @property
    def has_chat_template(self) -> bool:
        folder = self.path.parent
        return bool(self.config.get("chat_template")) or any(
            (folder / f).exists() for f in ("chat_template.jinja", "chat_template.json")
        )

    def apply_chat_template(self, messages: list[dict], **kw) -> str:
        """The prompt text of `messages` through the tokenizer's chat template, rendered by mlx-lm's tokenizer
        wrapper (transformers' Jinja renderer) exactly as `mlx_lm.generate` renders it; `kw` are its template
        options (add_generation_prompt, continue_final_message, enable_thinking, …)."""
        from mlx_lm.tokenizer_utils import load as load_wrapper

        try:
            if getattr(self, "_wrapper", None) is None:
                self._wrapper = load_wrapper(self.path.parent)
            return self._wrapper.apply_chat_template(messages, tokenize=False, **kw)
        except Exception as e:  # jinja2's TemplateError and the template's own raise_exception
            raise UserError(f"the chat template of {self.path.parent} failed: {_first_line(e)}") from None

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tk.encode_batch(texts)]

    def decode(self, ids: Iterable[int]) -> str:
        return self.tk.decode([int(i) for i in ids], skip_special_tokens=True)

    def save(self, folder: Path) -> None:
        copy_tokenizer_files(self.path.parent, folder)


def copy_tokenizer_files(src: Path, dst: Path) -> list[str]:
    """Copy the Hugging Face tokenizer files present in `src` into `dst`; returns the names copied."""
    copied = []
    for name in TOKENIZER_FILES:
        if (Path(src) / name).is_file():
            atomic.copy_file(Path(src) / name, Path(dst) / name)
            copied.append(name)
    return copied


def spm_to_tokenizer_json(model_file: Path, folder: Path) -> None:
    """Write `tokenizer.json` and `tokenizer_config.json` into `folder` for a SentencePiece model file.

    The tokenizer follows the SentencePiece model's own normalizer (NFKC charsmap, dummy prefix, whitespace handling),
    BPE merges ranked by piece score and byte fallback, so it encodes exactly like `SentencePieceProcessor.encode`
    (no BOS/EOS added: this project's models are trained without BOS). Control pieces become special tokens.
    """
    from tokenizers import AddedToken
    from transformers.convert_slow_tokenizer import SpmConverter, import_protobuf

    proto = import_protobuf().ModelProto()
    try:
        proto.ParseFromString(Path(model_file).read_bytes())
    except Exception as e:  # protobuf's DecodeError
        raise UserError(f"cannot read SentencePiece model {model_file}: {e}") from None
    if proto.trainer_spec.model_type not in (1, 2):  # unigram, BPE
        raise UserError(f"{model_file}: only BPE and unigram SentencePiece models can be converted")
    if proto.trainer_spec.model_type == 2:
        vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
    else:
        vocab = [(p.piece, p.score) for p in proto.pieces]
    tk = SpmConverter.build_tokenizer_from_spm_proto(proto, vocab)
    # Control pieces (<s>, </s>, <pad>) and <unk> are special tokens: kept whole, dropped by decode.
    specials = [p.piece for p in proto.pieces if p.type in (2, 3)]
    tk.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    folder = Path(folder)
    atomic.write_file(folder / TOKENIZER_JSON, lambda tmp: tk.save(str(tmp)))

    spec = proto.trainer_spec

    def piece(i: int) -> str | None:
        return proto.pieces[i].piece if 0 <= i < len(proto.pieces) else None

    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": piece(spec.bos_id),
        "eos_token": piece(spec.eos_id),
        "unk_token": piece(spec.unk_id),
        "pad_token": piece(spec.pad_id),
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 1_000_000_000,
    }
    atomic.write_text(
        folder / "tokenizer_config.json",
        json.dumps({k: v for k, v in config.items() if v is not None}, indent=2) + "\n",
    )

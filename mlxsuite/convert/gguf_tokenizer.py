"""The tokenizer of a GGUF file (`tokenizer.ggml.*`) as Hugging Face files that mlx-lm and this project open.

- `gpt2` (byte-level BPE: SmolLM2, Llama 3, …): a `tokenizers` BPE over `tokenizer.ggml.tokens` (id = position) and
  `tokenizer.ggml.merges`, with llama.cpp's pre-tokenizer for `tokenizer.ggml.pre` (GPT-2's regex; digits split one
  by one first for smollm/starcoder; Llama 3's regex) and a ByteLevel decoder → `tokenizer.json`.
- `llama` (SentencePiece BPE: Llama 2, Mistral, …): the pieces, scores and token types become a SentencePiece
  `ModelProto` (`tokenizer.model`), converted to `tokenizer.json` by `hf_tokenizer.spm_to_tokenizer_json`.

Control tokens become special tokens; `tokenizer_config.json` keeps bos/eos/unk/pad, `add_bos_token` and the chat
template.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx

from mlxsuite.data.hf_tokenizer import spm_to_tokenizer_json
from mlxsuite.platform import atomic
from mlxsuite.platform.errors import UserError

MODELS = ("gpt2", "llama")
# llama.cpp token types (llama-vocab.h); SentencePiece numbers its piece types the same way
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

_LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
# tokenizer.ggml.pre → llama.cpp's pre-tokenizer family (llama-vocab.cpp)
PRE_TOKENIZERS = {
    **dict.fromkeys(
        ("gpt-2", "gpt2", "phi-2", "roberta-bpe", "jina-es", "jina-de", "jina-v2-es", "jina-v2-de"), "gpt2"
    ),
    **dict.fromkeys(("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b"), "digits"),
    **dict.fromkeys(("llama3", "llama-v3", "llama-bpe", "falcon3", "pixtral"), "llama3"),
}


def _value(v):
    if isinstance(v, mx.array):
        return v.item() if v.ndim == 0 else v.tolist()
    return v


def check_tokenizer(metadata: dict) -> None:
    """UserError if the tokenizer described by (header) metadata cannot be rebuilt."""
    model = metadata.get("tokenizer.ggml.model")
    if model is None or "tokenizer.ggml.tokens" not in metadata:
        raise UserError("the GGUF file has no tokenizer (tokenizer.ggml.model / tokens)")
    if model not in MODELS:
        raise UserError(f"unsupported GGUF tokenizer {model!r}; from-gguf rebuilds {', '.join(MODELS)}")
    if model == "gpt2":
        if "tokenizer.ggml.merges" not in metadata:
            raise UserError("the GGUF gpt2 tokenizer has no merges (tokenizer.ggml.merges)")
        pre = metadata.get("tokenizer.ggml.pre")
        if pre not in PRE_TOKENIZERS:
            raise UserError(
                f"unsupported GGUF pre-tokenizer tokenizer.ggml.pre={pre!r}; known: {', '.join(sorted(PRE_TOKENIZERS))}"
            )
    elif "tokenizer.ggml.scores" not in metadata:
        raise UserError("the GGUF llama tokenizer has no scores (tokenizer.ggml.scores)")


def _special_id(meta: dict, key: str) -> int | None:
    tid = meta.get(f"tokenizer.ggml.{key}_token_id")
    return tid if isinstance(tid, int) and 0 <= tid < len(meta["tokenizer.ggml.tokens"]) else None


def bpe_tokenizer(meta: dict):
    """A `tokenizers.Tokenizer` for a gpt2-style GGUF vocabulary (meta: the metadata with Python values)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    tokens = meta["tokenizer.ggml.tokens"]
    types = meta.get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens)
    family = PRE_TOKENIZERS[meta.get("tokenizer.ggml.pre")]
    merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
    vocab = {t: i for i, t in enumerate(tokens)}
    tk = Tokenizer(models.BPE(vocab, merges, ignore_merges=family == "llama3"))
    if family == "llama3":
        tk.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(_LLAMA3_REGEX), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    else:
        steps = [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]  # use_regex: GPT-2's regex
        if family == "digits":
            steps.insert(0, pre_tokenizers.Digits(individual_digits=True))
        tk.pre_tokenizer = pre_tokenizers.Sequence(steps)
    tk.decoder = decoders.ByteLevel()
    _add_specials(tk, tokens, types, AddedToken)
    _bos_post_processor(tk, meta, default_add_bos=False)
    return tk


def _add_specials(tk, tokens, types, AddedToken) -> None:
    specials = [AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, types) if ty == CONTROL]
    user = [AddedToken(t, special=False, normalized=False) for t, ty in zip(tokens, types) if ty == USER_DEFINED]
    if specials:
        tk.add_special_tokens(specials)
    if user:
        tk.add_tokens(user)


def _bos_post_processor(tk, meta: dict, default_add_bos: bool) -> None:
    from tokenizers import processors

    bos = _special_id(meta, "bos")
    if meta.get("tokenizer.ggml.add_bos_token", default_add_bos) and bos is not None:
        name = meta["tokenizer.ggml.tokens"][bos]
        tk.post_processor = processors.TemplateProcessing(
            single=f"{name} $A", pair=f"{name} $A {name} $B", special_tokens=[(name, bos)]
        )


def spm_proto(meta: dict):
    """A SentencePiece BPE `ModelProto` for a llama-style GGUF vocabulary (pieces, scores, types)."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    tokens = meta["tokenizer.ggml.tokens"]
    scores = meta["tokenizer.ggml.scores"]
    types = meta.get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens)
    proto = pb.ModelProto()
    for piece, score, kind in zip(tokens, scores, types):
        proto.pieces.add(piece=piece, score=float(score), type=kind if kind in (1, 2, 3, 4, 5, 6) else NORMAL)
    spec = proto.trainer_spec
    spec.model_type = pb.TrainerSpec.BPE
    spec.vocab_size = len(tokens)
    spec.byte_fallback = BYTE in types
    for key, field in (("unknown", "unk_id"), ("bos", "bos_id"), ("eos", "eos_id"), ("padding", "pad_id")):
        tid = _special_id(meta, key)
        setattr(spec, field, tid if tid is not None else -1)
    norm = proto.normalizer_spec
    norm.name = "identity"
    norm.add_dummy_prefix = bool(meta.get("tokenizer.ggml.add_space_prefix", True))
    norm.remove_extra_whitespaces = False
    norm.escape_whitespaces = True
    return proto


def write_tokenizer(metadata: dict, folder: Path) -> list[str]:
    """Write the GGUF file's tokenizer into `folder`; returns the file names written."""
    from tokenizers import Tokenizer

    meta = {k: _value(v) for k, v in metadata.items() if k.startswith("tokenizer.")}
    check_tokenizer(meta)
    folder = Path(folder)
    written = ["tokenizer.json", "tokenizer_config.json"]
    if meta["tokenizer.ggml.model"] == "gpt2":
        tk = bpe_tokenizer(meta)
        atomic.write_file(folder / "tokenizer.json", lambda tmp: tk.save(str(tmp)))
        add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", False))
    else:
        proto = spm_proto(meta).SerializeToString()
        atomic.write_file(folder / "tokenizer.model", lambda tmp: tmp.write_bytes(proto))
        spm_to_tokenizer_json(folder / "tokenizer.model", folder)
        tk = Tokenizer.from_file(str(folder / "tokenizer.json"))
        _bos_post_processor(tk, meta, default_add_bos=True)
        atomic.write_file(folder / "tokenizer.json", lambda tmp: tk.save(str(tmp)))
        add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", True))
        written.insert(0, "tokenizer.model")
    tokens = meta["tokenizer.ggml.tokens"]

    def token(key):
        tid = _special_id(meta, key)
        return tokens[tid] if tid is not None else None

    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": token("bos"),
        "eos_token": token("eos"),
        "unk_token": token("unknown"),
        "pad_token": token("padding"),
        "add_bos_token": add_bos and token("bos") is not None,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 1_000_000_000,
        "chat_template": meta.get("tokenizer.chat_template"),
    }
    atomic.write_text(
        folder / "tokenizer_config.json",
        json.dumps({k: v for k, v in config.items() if v is not None}, indent=2, ensure_ascii=False) + "\n",
    )
    return written

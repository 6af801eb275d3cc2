"""`chat`, `generate` with a chat template, and prompt-cache files, on a tiny Hugging Face checkpoint whose tokenizer
has a ChatML template. References: mlx-lm's model and `generate_step` on the same folder, transformers' rendering of
the template (through mlx-lm's tokenizer wrapper), mlx-lm's `cache_prompt` and `load_prompt_cache`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import mlx.core as mx
import pytest
from conftest import run_cli, stdlib_text
from test_convert import VOCAB, make_hf

TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<unk>", "<|im_start|>", "<|im_end|>"]
PENALTY = 3.0  # a random model's greedy text is often one token repeated: the penalty makes the replies vary
WORDS = ["system", "user", "assistant", "the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog"]


def write_chat_tokenizer(folder) -> None:
    """A byte-level BPE (as Qwen2's: what transformers rebuilds for a qwen2 folder) over the whole vocabulary."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=SPECIALS, initial_alphabet=alphabet)
    tk.train_from_iterator([" ".join(WORDS), stdlib_text(20_000)], trainer)
    assert tk.get_vocab_size() == VOCAB
    tk.save(str(folder / "tokenizer.json"))
    cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": "<|im_end|>",
        "unk_token": "<unk>",
        "chat_template": TEMPLATE,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))


@pytest.fixture
def chat_model(tmp_path):
    folder = make_hf(tmp_path / "chat", "qwen2", tokenizer=False)
    write_chat_tokenizer(folder)
    return folder


def cli(*args, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mlxsuite", *args], input=stdin, capture_output=True, text=True, env=os.environ.copy()
    )


def reference_turn(model, tokenizer, messages: list[dict], max_tokens: int) -> tuple[list[int], list[int], str]:
    """(prompt ids, generated ids, reply) by mlx-lm on the whole conversation: greedy, stopping at EOS."""
    from mlx_lm.generate import generate_step
    from mlx_lm.sample_utils import make_logits_processors

    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    out = []
    processors = make_logits_processors(repetition_penalty=PENALTY)
    for token, _ in generate_step(mx.array(ids), model, max_tokens=max_tokens, logits_processors=processors):
        out.append(int(token))
        if out[-1] in tokenizer.eos_token_ids:
            break
    reply = tokenizer._tokenizer.decode([t for t in out if t not in tokenizer.eos_token_ids], skip_special_tokens=True)
    return ids, out, reply


def test_chat_prefills_only_new_tokens_and_equals_whole_conversation_generations(chat_model):
    from mlx_lm import load

    turns, max_tokens = ["the quick fox", "jumps over the dog", "lazy brown fox"], 6
    stdin = "\n".join(turns + ["/reset", "the dog"]) + "\n"
    r = cli("chat", str(chat_model), "-m", str(max_tokens), "-v", "--repetition-penalty", str(PENALTY), stdin=stdin)
    assert r.returncode == 0, r.stderr
    prompts = [line for line in r.stderr.splitlines() if line.startswith("Prompt:")]
    assert len(prompts) == 4

    model, tokenizer = load(str(chat_model))
    messages, held, replies, previous = [], [], [], []
    for k, text in enumerate(turns):
        messages.append({"role": "user", "content": text})
        ids, out, reply = reference_turn(model, tokenizer, messages, max_tokens)
        replies.append(reply)
        keep = 0  # the ids the chat's cache already holds: the previous prompt and the reply's decoded ids
        while keep < min(len(held), len(ids) - 1) and held[keep] == ids[keep]:
            keep += 1
        if k:
            assert keep >= len(previous), (keep, len(previous))  # the whole earlier conversation was reused
        cached = f" (after {keep} cached)" if keep else ""
        assert prompts[k].startswith(f"Prompt: {len(ids) - keep} tokens{cached},"), prompts[k]
        stopped = out[-1] in tokenizer.eos_token_ids
        held, previous = (ids + out)[: len(ids) + len(out) - (not stopped)], ids
        messages.append({"role": "assistant", "content": reply})
    # /reset starts over: nothing cached
    fresh = tokenizer.apply_chat_template([{"role": "user", "content": "the dog"}], add_generation_prompt=True)
    replies.append(reference_turn(model, tokenizer, [{"role": "user", "content": "the dog"}], max_tokens)[2])
    assert r.stdout == "".join(reply + "\n" for reply in replies)  # the transcript: generations over the conversation
    assert all(reply.strip() for reply in replies)
    assert prompts[3].startswith(f"Prompt: {len(fresh)} tokens,"), prompts[3]


def test_generate_applies_the_template_as_mlx_lm(chat_model, capsys):
    from mlx_lm import generate as mlx_lm_generate
    from mlx_lm import load

    model, tokenizer = load(str(chat_model))
    for args, prompt in (
        ([], tokenizer.apply_chat_template([{"role": "user", "content": "the fox"}], add_generation_prompt=True)),
        (["--ignore-chat-template"], tokenizer.encode("the fox")),
    ):
        code, out, err = run_cli(capsys, "generate", str(chat_model), "-p", "the fox", "-m", "5", "--json", *args)
        assert code == 0, err
        want = mlx_lm_generate(model, tokenizer, prompt, max_tokens=5)
        assert json.loads(out)["completion"] == want


def test_prompt_cache_files_are_mlx_lms_both_ways(chat_model, tmp_path, capsys):
    from mlx_lm import load
    from mlx_lm.models.cache import load_prompt_cache, make_prompt_cache

    ours, theirs = tmp_path / "ours.safetensors", tmp_path / "theirs.safetensors"
    code, _, err = run_cli(capsys, "cache-prompt", str(chat_model), "-p", "the quick", "--out", str(ours))
    assert code == 0, err
    # ours opens in mlx-lm and holds the keys and values mlx-lm computes for the same ids
    model, tokenizer = load(str(chat_model))
    cache, metadata = load_prompt_cache(str(ours), return_metadata=True)
    assert metadata["model"] == str(chat_model)
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "the quick"}], add_generation_prompt=False, continue_final_message=True
    )
    ref = make_prompt_cache(model)
    model(mx.array([ids]), cache=ref)
    assert cache[0].offset == len(ids)
    for a, b in zip(cache, ref):
        assert mx.allclose(a.state[0], b.state[0], atol=1e-5) and mx.allclose(a.state[1], b.state[1], atol=1e-5)

    # mlx-lm's file opens here, and generating after the cached prefix equals generating without a cache
    r = subprocess.run(
        [sys.executable, "-m", "mlx_lm.cache_prompt", "--model", str(chat_model), "--prompt", "the quick"]
        + ["--prompt-cache-file", str(theirs)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    answers = []
    for args in (
        ["-p", "the quick brown fox"],
        ["-p", " brown fox", "--prompt-cache-file", str(theirs)],
        ["-p", " brown fox", "--prompt-cache-file", str(ours)],
    ):
        code, out, err = run_cli(capsys, "generate", str(chat_model), "-m", "6", "--json", *args)
        assert code == 0, err
        answers.append(json.loads(out)["completion"])
    assert answers[0] == answers[1] == answers[2] and answers[0]

    # another model's cache is refused in one line
    other = make_hf(tmp_path / "other", "qwen2", seed=1, tokenizer=False)
    write_chat_tokenizer(other)
    code, out, err = run_cli(capsys, "generate", str(other), "-p", "x", "--prompt-cache-file", str(ours))
    assert code == 2 and "prompt cache of the model" in err and len(err.strip().splitlines()) == 1 and not out


@pytest.mark.parametrize(
    "args, stdin, ok",
    [
        (["generate", "{raw}"], "", False),
        (["generate", "{raw}", "-p", ""], "", False),
        (["generate", "{raw}", "-p", "-"], "", False),
        (["generate", "{chat}", "-p", ""], "", False),
        (["generate", "{raw}", "--allow-empty"], "", True),
        (["generate", "{chat}", "-p", "", "--system-prompt", "the fox"], "", True),
    ],
)
def test_empty_prompt_is_refused_unless_allowed(chat_model, tmp_path, args, stdin, ok):
    raw = make_hf(tmp_path / "raw", "qwen2")  # a tokenizer without a chat template
    args = [a.format(raw=raw, chat=chat_model) for a in args] + ["-m", "2"]
    r = cli(*args, stdin=stdin)
    if ok:
        assert r.returncode == 0, r.stderr
    else:
        assert r.returncode == 2 and "empty prompt" in r.stderr and r.stderr.count("\n") == 1, r.stderr


def test_short_flags_have_one_meaning_across_commands():
    """Each short flag means one thing everywhere, but for the two anchors: generate/chat use mlx-lm's
    (-m max tokens, -p prompt), bench ttft and quickstart llama-bench's (-m model, -p prompt lengths)."""
    import typer

    from mlxsuite.cli import app

    meanings: dict[str, set] = {}

    def walk(group, path=()):
        for name, cmd in group.commands.items():
            if hasattr(cmd, "commands"):
                walk(cmd, path + (name,))
                continue
            for p in cmd.params:
                longs = [o for o in p.opts if o.startswith("--")]
                for short in (o for o in p.opts if len(o) == 2 and o.startswith("-")):
                    meanings.setdefault(short, set()).add(longs[0] if longs else p.name)

    walk(typer.main.get_command(app))
    anchors = {"-m": {"--max-tokens", "--model"}, "-p": {"--prompt", "--prompt-lengths"}}
    for short, longs in meanings.items():
        assert longs == anchors.get(short, longs) and (len(longs) == 1 or short in anchors), (short, longs)
    assert meanings["-o"] == {"--output"} and meanings["-v"] == {"--verbose"}


def test_chat_with_kv_prediction_catches_the_auxiliary_up_on_each_turn(chat_model):
    """An exact pair (the auxiliary is the whole base, the predictor the identity) must give the base's own cache
    over a conversation: each new turn's fill runs after the auxiliary has seen every earlier id (the reply the
    base decoded, the last id of each prompt), at the same positions."""
    from mlxsuite import store
    from mlxsuite.chat import Conversation
    from mlxsuite.models.kv_prediction import KVPredictionModel, KVPredictor, PredictorArgs, layer_pruned

    base, tok, _ = store.load_model(str(chat_model))
    layers = list(range(len(base.layers)))
    predictor = KVPredictor(PredictorArgs.for_models(base, layer_pruned(base, layers), layers))
    predictor.set_identity()
    pair = KVPredictionModel(base, layer_pruned(base, layers), predictor)
    plain, kvp = Conversation(base, tok, prefill_step=4), Conversation(base, tok, pair=pair, prefill_step=4)
    for text in ["the quick fox", "jumps over the dog", "lazy brown fox"]:
        want, got = plain.reply(text, 5), kvp.reply(text, 5)
        assert got.text == want.text and kvp.reused == plain.reused
        assert kvp.aux_cache[0].offset == kvp.reused + got.prompt_tokens - 1  # caught up, then the new ids but the last
        for a, b in zip(kvp.cache, plain.cache):
            n = b.offset
            assert a.offset == n and mx.allclose(a.keys[..., :n, :], b.keys[..., :n, :], atol=1e-4)
            assert mx.allclose(a.values[..., :n, :], b.values[..., :n, :], atol=1e-4)


def test_repetition_penalty_is_mlx_lms(chat_model, capsys):
    """The logits processors see what mlx-lm's see (the prompt and the ids generated so far): same greedy text."""
    from mlx_lm import generate as mlx_lm_generate
    from mlx_lm import load
    from mlx_lm.sample_utils import make_logits_processors

    model, tokenizer = load(str(chat_model))
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "the fox"}], add_generation_prompt=True)
    processors = make_logits_processors(repetition_penalty=3.0)
    want = mlx_lm_generate(model, tokenizer, prompt, max_tokens=12, logits_processors=processors)
    assert want != mlx_lm_generate(model, tokenizer, prompt, max_tokens=12)  # the penalty changes this text
    code, out, err = run_cli(
        capsys, "generate", str(chat_model), "-p", "the fox", "-m", "12", "--repetition-penalty", "3", "--json"
    )
    assert code == 0, err
    # mlx-lm's BPE streaming detokenizer trims the answer's first space (trim_space); ours keeps what decode gives
    assert json.loads(out)["completion"].removeprefix(" ") == want


def test_chat_continues_a_saved_prompt_cache(chat_model, tmp_path, capsys):
    """chat --prompt-cache-file: the first message continues the cached text, as if typed whole; /reset goes back to
    the file's cache; mlx-lm's files (which do not record their text) are refused in one line."""
    saved = tmp_path / "opening.safetensors"
    code, _, err = run_cli(capsys, "cache-prompt", str(chat_model), "-p", "the quick", "--out", str(saved))
    assert code == 0, err
    args = ["chat", str(chat_model), "-m", "5", "-v", "--repetition-penalty", "3"]  # varied text: not all newlines
    whole = cli(*args, stdin="the quick brown fox\njumps over\n/reset\nthe quick brown fox\n")
    cached = cli(*args, "--prompt-cache-file", str(saved), stdin=" brown fox\njumps over\n/reset\n brown fox\n")
    assert whole.returncode == 0 == cached.returncode, cached.stderr
    assert cached.stdout == whole.stdout and whole.stdout.strip()
    prompts = [line for line in cached.stderr.splitlines() if line.startswith("Prompt:")]
    assert "cached)" in prompts[0] and "cached)" in prompts[2]  # the saved tokens were not prefilled again
    theirs = tmp_path / "theirs.safetensors"
    from mlx_lm.models.cache import load_prompt_cache, save_prompt_cache

    cache, meta = load_prompt_cache(str(saved), return_metadata=True)
    save_prompt_cache(str(theirs), cache, {"model": meta["model"], "tokenizer_config": "{}"})
    r = cli(*args, "--prompt-cache-file", str(theirs), stdin="x\n")
    assert r.returncode == 2 and "does not record its prompt" in r.stderr and r.stderr.count("\n") == 1


def test_copy_cache_duplicates_a_rotating_window():
    """A copied prompt cache (chat's saved system prompt, bench's prefix) continues exactly as the original would,
    a sliding window's rotating cache included, and its updates never reach the original."""
    from mlx_lm.models.cache import KVCache, RotatingKVCache

    from mlxsuite.generate import copy_cache

    mx.random.seed(0)
    caches = [KVCache(), RotatingKVCache(max_size=4)]
    k, v = mx.random.normal((1, 2, 6, 8)), mx.random.normal((1, 2, 6, 8))
    for c in caches:
        c.update_and_fetch(k, v)
    copies = copy_cache(caches)
    saved = [[mx.array(a) for a in c.state] for c in caches]
    step = mx.random.normal((1, 2, 1, 8))
    for c, d, before in zip(caches, copies, saved):
        assert type(d) is type(c) and d.offset == c.offset == 6
        got = d.update_and_fetch(step, step)
        assert all(mx.array_equal(a, b) for a, b in zip(c.state, before))  # the original is untouched
        want = c.update_and_fetch(step, step)
        assert all(mx.array_equal(a, b) for a, b in zip(got, want)) and d.offset == c.offset == 7

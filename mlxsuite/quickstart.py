"""The quickstart: tokenizer + tiny LM on the embedded corpus, validation metrics, a generated sample.
Finished steps are reused when run again."""

from __future__ import annotations

from typing import Callable, Optional

from . import store
from .generate import generate_text
from .train_lm import LMRunSpec, eval_model, train_lm
from .trainer import TrainConfig, has_checkpoint

PROMPT = "def read_file(path):\n    "


def run_quickstart(name: str = "quickstart-lm", steps: int = 300, fresh: bool = False, callback: Optional[Callable] = None):
    folder = store.output_path(name)
    finished = (folder / store.WEIGHTS_FILE).exists()
    if fresh or not finished:
        spec = LMRunSpec(
            out=name, preset="tiny", vocab_size=2048, seq_len=128, batch_size=16,
            train=TrainConfig(steps=steps, lr=3e-3, warmup=30, save_every=100, eval_every=steps),
        )
        resume = not fresh and has_checkpoint(folder / "run")
        train_lm(spec, resume=resume, force=True, callback=callback)
    model, tok, folder = store.load_model(name)
    result = eval_model(name)
    sample = generate_text(model, tok, PROMPT, max_tokens=48)
    return {"folder": str(folder), "reused": finished and not fresh, "eval": result, "prompt": PROMPT, "sample": sample}

"""llama.cpp as a `bench ttft` mode (`llama.cpp`), through llama-cpp-python (the optional `llama-cpp` extra).

It runs the model's GGUF file (`Setup.gguf`) on the same random prompt ids, inside the same interleaved
schedule as the other modes, with as many threads as the BLAS has (so both runtimes use the same cores), prompt
evaluation in llama.cpp's own batch size (512, llama-cli's and llama-bench's default). TTFT is the prompt's
evaluation plus the first token (greedy, the argmax of the last position's logits, as the other modes sample); each
decoded token is one more single-token evaluation and its argmax. The weights are the GGUF's own (e.g. Q4_1), not
the dequantized ones the MLX modes run; the FLOPs counted are the same model's.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Optional

import mlx.core as mx
import numpy as np

from mlxsuite import platform
from mlxsuite.bench.modes import Mode, Setup, prompt_flops, register_mode
from mlxsuite.platform.errors import UserError

NAME = "llama.cpp"
BATCH = 512  # llama.cpp's default logical and physical batch (n_batch, n_ubatch)
INSTALL = "pip install 'mlxsuite[llama-cpp]' (it builds llama.cpp from source: ~10 minutes; see the README)"


def require():
    """The llama_cpp module, or a one-line error saying how to install it."""
    try:
        import llama_cpp
    except ImportError:
        raise UserError(f"mode {NAME!r} needs llama-cpp-python, which is not installed: {INSTALL}") from None
    except OSError as e:  # installed, but its llama.cpp library does not load
        raise UserError(f"llama-cpp-python is installed but its llama.cpp library does not load ({e})") from None
    return llama_cpp


# Loads the file and evaluates two tokens in a child process: a llama.cpp built for another CPU dies of SIGILL there,
# not in the benchmark's process.
PROBE = """
import sys, llama_cpp
llm = llama_cpp.Llama(model_path=sys.argv[1], n_ctx=64, n_batch=64, n_threads=1, n_threads_batch=1, verbose=False)
llm.eval([0, 1])
"""


def probe(path) -> Optional[str]:
    """None when llama.cpp loads `path` and evaluates in a child process, else why not (one line)."""
    try:
        done = subprocess.run([sys.executable, "-c", PROBE, str(path)], capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        return "llama.cpp did not load the file within 5 minutes"
    if done.returncode < 0:
        name = signal.Signals(-done.returncode).name
        hint = " (built for another CPU? rebuild llama-cpp-python: see the README)" if name == "SIGILL" else ""
        return f"llama.cpp crashed ({name}) loading {path}{hint}"
    if done.returncode:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        return f"llama.cpp failed on {path}: {last}"
    return None


def threads() -> int:
    """The BLAS's GEMM threads (what the MLX modes' prefill runs on); where the BLAS does not say (Accelerate),
    the count it would get: the cores not already busy."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return platform.blas_threads() or platform.default_blas_threads(os.cpu_count() or 1, load)


def build(setup: Setup) -> Mode:
    llama_cpp = require()
    path = setup.gguf
    if path is None:
        raise UserError(f"mode {NAME!r} runs a GGUF file: {setup.name} is not one")
    failure = probe(path)
    if failure:
        raise UserError(failure)
    n_threads = threads()
    args = setup.model.args
    llm = llama_cpp.Llama(
        model_path=str(path),
        n_ctx=min(max(setup.context, BATCH), args.max_position_embeddings),  # a short context would shrink the batch
        n_batch=BATCH,
        n_ubatch=BATCH,
        n_threads=n_threads,
        n_threads_batch=n_threads,
        verbose=False,
    )
    n_vocab = llm.n_vocab()
    arch = llm.metadata.get("general.architecture", "")
    theirs = (n_vocab, llm.metadata.get(f"{arch}.block_count"), llm.metadata.get(f"{arch}.embedding_length"))
    ours = (args.vocab_size, args.num_hidden_layers, args.hidden_size)
    if tuple(str(x) for x in theirs) != tuple(str(x) for x in ours):
        raise UserError(
            f"{path} is not the model measured: vocabulary, layers, width {theirs} against {setup.name}'s {ours}"
        )

    def greedy() -> int:
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(n_vocab,))
        return int(logits.argmax())

    def run(tokens: mx.array, cache: Optional[list], decode: int):
        llm.reset()  # the next eval clears the KV cache from position 0
        llm.eval(tokens[0].tolist())
        token = greedy()
        yield mx.array([token])
        for _ in range(decode):
            llm.eval([token])
            token = greedy()
            yield token

    version = getattr(llama_cpp, "__version__", None)
    info = {
        "summary": f"llama-cpp-python {version}, {n_threads} thread{'s' if n_threads > 1 else ''}, batch "
        f"{llm.n_batch}, {os.path.basename(str(path))}",
        "version": version,
        "threads": n_threads,
        "batch": llm.n_batch,  # BATCH, or the context when that is smaller
        "gguf": str(path),
    }
    return Mode(NAME, run, prompt_flops(setup.model), max_batch=1, info=info, mlx_memory=False)


register_mode(NAME, build, require)

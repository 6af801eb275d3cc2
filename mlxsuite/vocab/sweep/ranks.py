"""Spreading the sweep's runs over the processes of `mlx.launch`: every rank trains its share alone (a process group
of one, so no gradient is averaged across runs), and the ranks exchange what they measured as JSON through the
launch's own group (so no shared filesystem is needed across machines)."""

from __future__ import annotations

import json

import mlx.core as mx
import numpy as np

from mlxsuite.platform.errors import UserError


def gather_json(obj, group) -> list:
    """Every rank's `obj` (JSON-serializable), in rank order, on every rank: bytes through `all_gather`."""
    if group.size() == 1:
        return [json.loads(json.dumps(obj))]
    data = np.frombuffer(json.dumps(obj).encode(), dtype=np.uint8)
    lengths = np.array(mx.distributed.all_gather(mx.array([len(data)], dtype=mx.int32), group=group))
    padded = np.zeros(int(lengths.max()), dtype=np.uint8)
    padded[: len(data)] = data
    rows = np.array(mx.distributed.all_gather(mx.array(padded)[None], group=group))
    return [json.loads(bytes(rows[i, : int(n)]).decode()) for i, n in enumerate(lengths)]


def solo_group(world):
    """A group of this process alone: MLX's ring backend cannot split a group, but initializing a backend that is not
    available returns a singleton group (`strict=False`) while `init()` keeps returning the launch's group."""
    if world.size() == 1:
        return world
    for backend in ("jaccl", "nccl", "mpi", "ring"):
        if mx.distributed.is_available(backend):
            continue
        group = mx.distributed.init(strict=False, backend=backend)
        if group.size() == 1:
            return group
    raise UserError("cannot make a one-process group beside the launch's (every MLX distributed backend is available)")


def assign(costs: list[float], ranks: int) -> list[list[int]]:
    """Indices of `costs` per rank: longest first to the least-loaded rank (ties: the lower rank), each rank's list
    then in index order. Deterministic, so every rank computes the same split."""
    loads = [0.0] * ranks
    shares: list[list[int]] = [[] for _ in range(ranks)]
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        r = min(range(ranks), key=lambda r: (loads[r], r))
        loads[r] += costs[i]
        shares[r].append(i)
    return [sorted(s) for s in shares]

"""Step memory: the `max_tasks_per_chunk` setting, and an estimate of a chunk's memory from its graph.

`max_tasks_per_chunk` is a number of tasks, or a memory budget: a size such as "512MB" / "2GiB", or
"auto" (a quarter of the memory available when the step is traced). With a budget, the model traces
the gradient of a 2-task and a 4-task chunk, measures each graph with `graph_bytes`, fits
fixed + per_task * tasks, and takes the largest chunk whose estimate fits. The estimate is the sum of
the sizes of *every* tensor of the graph, as if none were ever freed: an upper bound on the chunk's
intermediates (benchmarks.training_speed prints it beside the measured peak; it is a few times larger).
"""

from __future__ import annotations

import math
import numbers
import os
import re
from typing import NamedTuple

import tensorflow as tf

AUTO_FRACTION = 0.25  # "auto": this share of the memory available when the step is traced
_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*([a-z]+)\s*$", re.IGNORECASE)


class ChunkSetting(NamedTuple):
    tasks: int | None = None    # a fixed number of tasks per chunk
    budget: int | None = None   # or a memory budget in bytes (the chunk is chosen from it)
    auto: bool = False          # or the "auto" budget, read when the step is traced


def chunk_setting(value) -> ChunkSetting:
    """Parses `max_tasks_per_chunk`: None, a positive int, "auto" or a size like "512MB"."""
    if value is None:
        return ChunkSetting()
    if isinstance(value, str) and value.strip().lower() == "auto":
        return ChunkSetting(auto=True)
    if isinstance(value, str) and (m := _SIZE.match(value)) and m[2].lower() in _UNITS:
        budget = int(float(m[1]) * _UNITS[m[2].lower()])
        if budget > 0:
            return ChunkSetting(budget=budget)
    if isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1:
        return ChunkSetting(tasks=int(value))
    raise ValueError(f"max_tasks_per_chunk must be a number of tasks >= 1, 'auto', a memory budget such as "
                     f"'512MB' or '2GiB' (units: {', '.join(_UNITS)}), or None (no chunking); got {value!r}")


def available_bytes() -> int:
    """Memory available to new allocations (Linux: MemAvailable), else the physical memory free."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def budget_bytes(setting: ChunkSetting) -> int | None:
    if setting.auto:
        return int(AUTO_FRACTION * available_bytes())
    return setting.budget


# ops whose output shares its input's buffer: they allocate nothing
_ALIASING = frozenset({"Reshape", "Identity", "IdentityN", "ExpandDims", "Squeeze", "StopGradient",
                       "ReadVariableOp", "Const", "Placeholder"})


def graph_bytes(graph) -> int:
    """Sum of the sizes of every statically shaped tensor the graph's ops allocate."""
    total = 0
    for op in graph.get_operations():
        if op.type in _ALIASING:
            continue
        for out in op.outputs:
            if out.dtype not in (tf.resource, tf.variant) and out.shape.is_fully_defined():
                total += out.shape.num_elements() * out.dtype.size
    return total


class StepMemory(NamedTuple):
    """Estimated bytes of a chunk of `tasks` tasks: fixed + per_task * tasks."""
    fixed: int
    per_task: int

    def of(self, tasks: int) -> int:
        return self.fixed + self.per_task * tasks

    def tasks_within(self, budget: int, most: int) -> int:
        """The largest chunk (1 ..`most` tasks) whose estimate fits in `budget` (at least 1)."""
        fits = math.floor((budget - self.fixed) / max(self.per_task, 1))
        return int(min(most, max(1, fits)))


def fit_step_memory(bytes_of_chunk) -> StepMemory:
    """StepMemory from `bytes_of_chunk(tasks)` at 2 and 4 tasks (a 1-task graph is vectorized
    differently, so it is not used)."""
    two, four = bytes_of_chunk(2), bytes_of_chunk(4)
    per_task = max((four - two) // 2, 0)
    return StepMemory(max(two - 2 * per_task, 0), per_task)

"""The kernels of a model that tuning can work on, found by lowering the graph once.

A task is one distinct kernel workload of a batch-specialised function (``main_b<N>``: static
shapes) whose schedule rule has knobs (space.py). Identical kernels, such as the repeated
blocks of a ResNet stage, are one task. The symbolic-batch ``main`` is never tuned: its
kernels keep cnnc's schedules.

    tasks = extract_tasks(g, choice, batch_sizes=(1, 64))
    tasks[0].label, tasks[0].flops, tasks[0].workload
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import tvm_ffi

from .space import is_static, rule_for


def workload_key(func) -> str:
    """The kernel's identity in the cache: the structural hash of its unscheduled PrimFunc
    (stable across processes and models; names of buffers and layers do not enter it)."""
    return f"{tvm_ffi.structural_hash(func):016x}"


def target_key(choice) -> str:
    """The target's identity in the cache: its TVM configuration as sorted JSON."""
    return json.dumps(choice.config, sort_keys=True)


@dataclass
class KernelTask:
    workload: str
    func: object                 # the unscheduled PrimFunc
    rule: object                 # space.ConvRule or DenseRule
    flops: int
    batch: int
    names: list = field(default_factory=list)

    @property
    def work(self) -> int:
        """FLOPs of every call in the model: what its share of the budget follows."""
        return self.flops * len(self.names)

    @property
    def label(self) -> str:
        more = f" (+{len(self.names) - 1} same)" if len(self.names) > 1 else ""
        return f"{self.names[0]} b{self.batch}{more}"


def make_task(name: str, func, schedule) -> KernelTask | None:
    rule = rule_for(schedule)
    if rule is None or not is_static(func):
        return None
    return KernelTask(workload_key(func), func, rule, rule.flops(func),
                      int(func.params[0].shape[0]), [name])


def extract_tasks(g, choice, batch_sizes) -> list[KernelTask]:
    """Every tunable kernel workload of the batch-specialised functions, most work first."""
    return find_tasks(g, choice, batch_sizes)[0]


def find_tasks(g, choice, batch_sizes) -> tuple[list[KernelTask], int]:
    """``extract_tasks`` and the number of kernel functions the model's build compiles (every
    function's, the symbolic batch's included): what building it costs follows that count."""
    from ..cpu.emit import build_cpu_module

    tasks: dict[str, KernelTask] = {}
    kernels = 0

    def collect(name, func, schedule):
        nonlocal kernels
        kernels += 1
        task = make_task(name, func, schedule)
        if task is not None:
            if task.workload in tasks:
                if name not in tasks[task.workload].names:
                    tasks[task.workload].names.append(name)
            else:
                tasks[task.workload] = task
        return func  # the module built here is thrown away: no need to schedule it

    build_cpu_module(g, choice.vector_lanes, tuple(batch_sizes), [], schedule_hook=collect)
    return sorted(tasks.values(), key=lambda t: -t.work), kernels

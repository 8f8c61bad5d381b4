"""Tuning as a budget: search faster schedules for a model's kernels, keep them in a cache,
and use them in later builds only where they were measured faster than cnnc's defaults.

    cnnc tune specs/resnet18_cifar.yaml --budget 10m --batch-sizes 1,64
    cnnc compile specs/resnet18_cifar.yaml --batch-sizes 1,64 -o build/r18   # uses the cache

The pipeline: ``tasks`` finds the distinct kernels of the batch-specialised functions;
``search`` shares the budget among them by FLOPs and, for each, first times the other tiles of
cnnc's own schedule rule (``space``), then gives what is left of the kernel's share to TVM's
MetaSchedule (``metaschedule``, in a worker process stopped at the kernel's deadline, so the
budget is a deadline for the whole run), every candidate timed the same way (``measure``: TVM's
runtime, the model's thread count); ``cache`` keeps one record per (kernel workload, target);
``apply`` is the schedule hook a build uses.

Why the tiles first: measured on a 2-core AVX-512 machine (shared with other work),
MetaSchedule with its default CPU rules took 222 s for 64 trials on the blocked 64->64 3x3
conv of ResNet-18 CIFAR (batch 1) and found a schedule 1.2x slower than cnnc's default, and
191 s for 32 trials on LeNet-5's first conv (batch 64) to find one 2x slower; the tile search
tries every tile of such a conv in 2 to 10 s, and found LeNet's conv 1.2x faster. A 10-minute
budget for a whole network (15 to 30 kernels) leaves MetaSchedule some 20 to 40 s a kernel:
few trials, so its results count where budgets are long.

``budget`` and ``cache`` do not import TVM; the rest do.
"""

from .budget import format_seconds, parse_budget
from .cache import Record, TuningCache, TuningCacheWarning, default_cache_dir

__all__ = ["Record", "TuningCache", "TuningCacheWarning", "default_cache_dir",
           "format_seconds", "parse_budget"]

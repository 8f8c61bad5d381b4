"""Data-parallel training on ``torch.distributed``: one process per device, the same compiled
step on each, gradients summed across processes inside the step.

    torchrun --nproc_per_node 2 -m cnncompiler train specs/lenet5.yaml --data digits -o run
    cnnc train specs/lenet5.yaml --data digits -o run --nproc 2        # the same, launched

Each rank trains on its part of every global batch (global batch = per-rank batch x world
size). The step scales the gradient of its loss by the rank's share of the global batch
(``n_rank / N``) and all-reduces the gradients (in flat buckets) before the optimizer update, so
every rank applies the update of the whole global batch: the same parameters, step for step, as
one process with the global batch. With ``sync_batchnorm: true`` batch norm's per-channel sums are
all-reduced too (forward and backward), which makes the batch statistics the global batch's.

The collectives run on the tensors where they lie (``torch.from_dlpack`` shares a TVM tensor's
memory; gloo on CPUs, NCCL on GPUs); the compiled step calls them through a function registered
with TVM (``backends.train_lower.ALL_REDUCE``), so a step never leaves its device for a
reduction.
"""

from __future__ import annotations

import contextlib
import os
import sys
from datetime import timedelta

import numpy as np

from ..errors import CnncError, TrainingError

TIMEOUT_ENV = "CNNC_DISTRIBUTED_TIMEOUT"
DEFAULT_TIMEOUT_S = 60               # a collective waits this long for a rank that stopped


class Replicas:
    """This process's place in a data-parallel run: its rank among ``world`` processes."""

    def __init__(self, rank: int, world: int, local_world: int, backend: str,
                 local_rank: int = 0):
        self.rank, self.world, self.local_world, self.backend = rank, world, local_world, backend
        self.local_rank = local_rank  # the GPU a process of a CUDA run trains on

    @property
    def leader(self) -> bool:
        """Rank 0: the one process that writes checkpoints, artifacts and logs."""
        return self.rank == 0

    def describe(self, batch_size: int, sync_batchnorm: bool) -> str:
        """The log line that states the global batch."""
        return (f"data-parallel: {self.world} processes ({self.backend}) x {batch_size} samples "
                f"= global batch {self.world * batch_size}"
                f"{'; batch norm synchronised' if sync_batchnorm else ''}")

    def __repr__(self) -> str:
        return f"Replicas(rank {self.rank} of {self.world}, {self.backend})"

    # -- host-side collectives (a few numbers per step) ---------------------------------------
    def sum(self, values) -> np.ndarray:
        """The element-wise sum of ``values`` (float64) over all ranks."""
        import torch
        import torch.distributed as dist

        t = torch.tensor(np.asarray(values, np.float64))
        self._call(dist.all_reduce, t)
        return t.numpy()

    def broadcast(self, tensors) -> None:
        """Overwrite each TVM tensor, in place, with rank 0's."""
        import torch
        import torch.distributed as dist

        for tensor in tensors:
            self._call(dist.broadcast, torch.from_dlpack(tensor), src=0)

    def barrier(self) -> None:
        import torch.distributed as dist

        self._call(dist.barrier)

    @contextlib.contextmanager
    def leader_first(self):
        """Rank 0 runs the block first (it compiles into the shared cache), the others after it
        (they load what it wrote) instead of all compiling the same code at once."""
        if not self.leader:
            self.barrier()
        yield
        if self.leader:
            self.barrier()

    def _call(self, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except RuntimeError as exc:  # gloo/NCCL: a peer closed its connection or timed out
            raise TrainingError(lost_contact(self.rank, self.world, exc)) from None

    # -- the data of one rank -----------------------------------------------------------------
    def part(self, indices: np.ndarray) -> tuple[np.ndarray, bool]:
        """(this rank's samples of a global batch, whether it has any). A rank left without
        one (the epoch's last global batch is shorter than the world) runs the step on one
        sample of the batch with a share of 0, so the collectives still meet and the update
        is the real samples' alone."""
        mine = np.array_split(indices, self.world)[self.rank]
        return (mine, True) if len(mine) else (indices[:1], False)

    def evaluation_part(self, count: int) -> slice:
        """This rank's contiguous part of ``count`` evaluation samples (cut as ``part`` cuts
        a batch)."""
        mine = np.array_split(np.arange(count), self.world)[self.rank]
        return slice(int(mine[0]), int(mine[-1]) + 1) if len(mine) else slice(0, 0)


def lost_contact(rank: int, world: int, exc: Exception) -> str:
    first = _first_sentence(str(exc)) or type(exc).__name__
    return (f"rank {rank} of {world}: another training process stopped or cannot be reached "
            f"({first}); the run stops here, and its last checkpoint is intact (resume it "
            "with --resume)")


def _first_sentence(message: str) -> str:
    """The part of a gloo/NCCL error a user reads: its first line without the source location
    (``[.../pair.cc:537] Read error [127.0.0.1]:9961: Connection reset by peer. This is ...``
    gives ``Read error [127.0.0.1]:9961: Connection reset by peer``)."""
    line = message.strip().splitlines()[0] if message.strip() else ""
    if line.startswith("[") and "] " in line:
        line = line.split("] ", 1)[1]
    return line.split(". ")[0].rstrip(".")[:300]


_current: Replicas | None = None
_registered = False
failure: Exception | None = None   # the collective error a compiled step's call ran into


def current() -> Replicas | None:
    """The run's Replicas when this process is one of several (torch.distributed initialised
    by ``init_from_env`` or by the caller), else None: one process trains alone."""
    global _current
    if _current is not None:
        return _current
    if "torch" not in sys.modules:  # nothing can have joined a process group
        return None
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() < 2:
        return None
    _current = Replicas(dist.get_rank(), dist.get_world_size(),
                        int(os.environ.get("LOCAL_WORLD_SIZE", dist.get_world_size())),
                        dist.get_backend(), int(os.environ.get("LOCAL_RANK", 0)))
    register_all_reduce()
    return _current


def launched() -> bool:
    """Whether this process was started by torchrun (or ``cnnc train --nproc``)."""
    return "TORCHELASTIC_RUN_ID" in os.environ or (
        "RANK" in os.environ and "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ)


def init_from_env(device_kind: str = "cpu") -> Replicas | None:
    """Join the process group torchrun describes in the environment (RANK, WORLD_SIZE,
    MASTER_ADDR, ...): gloo for CPU training, NCCL for CUDA. Returns None for a world of one."""
    if not launched() or int(os.environ.get("WORLD_SIZE", "1")) < 2:
        return None
    try:
        import torch.distributed as dist
    except ImportError:
        raise CnncError("training on several processes needs torch.distributed: "
                        "pip install \"cnnc[distributed]\"") from None
    if not dist.is_initialized():
        backend = "nccl" if device_kind == "cuda" else "gloo"
        timeout = timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)))
        try:
            dist.init_process_group(backend, timeout=timeout)
        except (RuntimeError, ValueError) as exc:
            raise CnncError(f"rank {os.environ.get('RANK')}: cannot join the training processes "
                            f"({str(exc).splitlines()[0][:300]})") from None
    return current()


def register_all_reduce() -> None:
    """Register the step's ``ALL_REDUCE`` with TVM: the compiled step calls it with a flat
    bucket and uses the sum it returns (a new tensor on the same device: the step's values
    are immutable)."""
    global _registered
    if _registered:
        return
    import tvm

    from cnncompiler.backends.train_lower import ALL_REDUCE

    @tvm.register_global_func(ALL_REDUCE, override=True)
    def _all_reduce_sum(bucket):
        import torch
        import torch.distributed as dist

        global failure
        total = torch.from_dlpack(bucket).clone()
        try:
            dist.all_reduce(total)
        except RuntimeError as exc:
            failure = exc  # the trainer reports it, past TVM's wrapping of the error
            raise
        return tvm.runtime.from_dlpack(total)

    _registered = True


def shutdown() -> None:
    """Leave the process group (at the end of a run)."""
    global _current
    try:
        import torch.distributed as dist
    except ImportError:
        return
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _current = None


__all__ = ["Replicas", "current", "init_from_env", "launched",
           "register_all_reduce", "shutdown"]

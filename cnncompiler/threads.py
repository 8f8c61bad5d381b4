"""How many threads compiled kernels run on.

TVM's runtime sizes its thread pool, on first use, from ``TVM_NUM_THREADS``, else to half the
logical CPUs on x86 (it assumes two hyperthreads a core). On a machine without SMT that is half
the cores: a 2-CPU machine ran every model on one thread. cnnc counts the physical cores the
process may run on instead, and sets ``TVM_NUM_THREADS`` to that before TVM starts, unless the
user set it.

    os.environ["TVM_NUM_THREADS"] = "4"   # before the first model runs: cnnc keeps it
"""

from __future__ import annotations

import os
from pathlib import Path

ENV = "TVM_NUM_THREADS"
TOPOLOGY = Path("/sys/devices/system/cpu")
GIVEN = os.environ.get(ENV)  # the user's own setting, before cnnc sets it (processes it starts
                             # choose their own count unless the user chose one)


def physical_cores() -> int:
    """Physical cores among the CPUs this process may run on: the distinct sets of hardware
    threads sharing a core (Linux's thread_siblings_list, which, unlike core_id, is unique
    across dies and clusters); the CPU count where the topology cannot be read."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else \
        list(range(os.cpu_count() or 1))
    cores = set()
    for cpu in cpus:
        topology = TOPOLOGY / f"cpu{cpu}" / "topology"
        try:
            cores.add((topology / "thread_siblings_list").read_text().strip())
        except OSError:
            return max(1, len(cpus))
    return max(1, len(cores))


def default_threads() -> int:
    """``TVM_NUM_THREADS`` when set to a positive number, else the physical cores, shared
    among the processes torchrun started on this machine (``LOCAL_WORLD_SIZE``)."""
    value = os.environ.get(ENV, "")
    if value.isdigit() and int(value) > 0:
        return int(value)
    local = os.environ.get("LOCAL_WORLD_SIZE", "")
    share = int(local) if local.isdigit() and int(local) > 0 else 1
    return max(1, physical_cores() // share)


def ensure_thread_count() -> int:
    """Set ``TVM_NUM_THREADS`` (when unset or invalid) for TVM's pool, which reads it once."""
    threads = default_threads()
    os.environ[ENV] = str(threads)
    return threads

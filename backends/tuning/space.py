"""What tuning may change in a kernel: the knobs of cnnc's own schedule rules.

Each tunable rule knows, for one kernel, its default configuration (what the rule picks
without tuning), the candidate configurations to try, in a good order, and how to schedule
the kernel with one of them. The search space is cnnc's own schedules with other tiles, not
TVM's generic search: on this project's 2-core CPUs MetaSchedule needed minutes per kernel
to approach what these schedules do by default (see backends/tuning/__init__.py).

    rule = rule_for(schedule)          # the schedule emit_kernel was given (a partial)
    rule.default_config(func)          # {'ro': 4, 'rw': 4, 'rh': 1, 'ci': None}
    for config in rule.candidates(func, tried): ...
    rule.apply(func, config)           # the scheduled PrimFunc
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict

from tvm import s_tir, tirx

from ..cpu.conv import ConvTile, default_tile, divisors, schedule_conv
from ..cpu.conv_pool import schedule_conv_pool
from ..cpu.dense import DenseTile, choose_dense_tile, schedule_dense

TILE_MIN_ACCUMULATORS = 4
TILE_MAX_ACCUMULATORS = 28      # of AVX-512's 32 vector registers, leaving weights and one input
CHUNK_SIZES_TRIED = (16 << 10, 32 << 10, 64 << 10)   # weight chunk sizes tried in the reduction


class ConvRule:
    """cnnc's blocked conv schedule (``schedule_conv``) with other ``ConvTile``s: register
    tiles of ``ro`` channel blocks by ``rw`` columns, then, around the best of them, tasks of
    ``rh`` rows reducing ``ci`` input blocks at a time."""

    name = "conv"

    def __init__(self, schedule: functools.partial):
        self.schedule = schedule
        self.geo = schedule.keywords["geo"]
        self.registers = schedule.keywords.get("registers", 32)

    def batch(self, func) -> int:
        return int(func.params[0].shape[0])

    def flops(self, func) -> int:
        return self.geo.flops() * self.batch(func)

    def default_config(self, func) -> dict:
        return asdict(default_tile(self.geo, self.registers, self.batch(func)))

    def apply(self, func, config: dict):
        return self.schedule(func, tile=ConvTile(**config))

    def register_tiles(self) -> list[tuple[int, int]]:
        """(ro, rw) pairs that fit the registers, most accumulators first."""
        geo = self.geo
        blocks = geo.out_blocks if geo.groups == 1 else geo.group_out_blocks
        width = geo.out_spatial[-1]
        pairs = [(ro, rw) for ro in divisors(blocks) for rw in divisors(width) if rw <= 16
                 and TILE_MIN_ACCUMULATORS <= ro * rw <= TILE_MAX_ACCUMULATORS
                 and ro * rw + ro + 1 <= self.registers]
        return sorted(pairs, key=lambda p: (-p[0] * p[1], (p[0] + p[1]) / (p[0] * p[1])))

    def chunkings(self, ro: int) -> list[tuple[int, int | None]]:
        """(rh, ci) choices: rows per task, input blocks per weight chunk (None: all)."""
        geo = self.geo
        rows = geo.out_rows
        heights = [d for d in divisors(rows) if d <= 8][:4]
        chunk = ro * geo.ob * 4 * geo.ib * math.prod(geo.kernel)
        cis = sorted({max([d for d in divisors(geo.group_in_blocks) if d * chunk <= size]
                          or [1]) for size in CHUNK_SIZES_TRIED})
        cis = [c for c in cis if c < geo.group_in_blocks] + [None]
        return [(rh, ci) for rh in heights for ci in cis if (rh, ci) != (1, None)]

    def candidates(self, func, tried: list, baseline: tuple | None = None):
        """Register tiles first (unchunked), then chunkings of the best tile so far, the
        default (``baseline``: its config and ms) included. ``tried`` grows as the caller
        times the candidates, so the second phase sees the first's results."""
        for ro, rw in self.register_tiles():
            yield {"ro": ro, "rw": rw, "rh": 1, "ci": None}
        timed = [(ms, c) for c, ms in [*([baseline] if baseline else []), *tried]
                 if ms is not None and is_tile(c)]
        best = min(timed, key=lambda t: t[0])[1] if timed else self.default_config(func)
        for rh, ci in self.chunkings(best["ro"]):
            yield {"ro": best["ro"], "rw": best["rw"], "rh": rh, "ci": ci}


class ConvPoolRule(ConvRule):
    """A conv and the pool it computes (``schedule_conv_pool``) with other register tiles
    (``ConvRule``'s); its bands keep their conv rows whole, so the reduction is not chunked."""

    name = "conv_pool"

    def candidates(self, func, tried: list, baseline: tuple | None = None):
        for ro, rw in self.register_tiles():
            yield {"ro": ro, "rw": rw, "rh": 1, "ci": None}


class DenseRule:
    """cnnc's dense schedule (``schedule_dense``) with other ``DenseTile``s: ``rn`` batch rows
    by ``ro`` output vectors in registers."""

    name = "dense"

    def __init__(self, schedule: functools.partial):
        self.schedule = schedule
        self.registers = schedule.keywords.get("registers", 32)

    @staticmethod
    def extents(func) -> tuple[int, ...]:
        """(batch, output blocks, lanes, input features) of the dense stage."""
        sch = s_tir.Schedule(func)
        loops = sch.get_loops(sch.get_sblock("dense"))
        return tuple(int(sch.get(lp).extent) for lp in loops)

    def flops(self, func) -> int:
        return 2 * math.prod(self.extents(func))

    def default_config(self, func) -> dict:
        batch, blocks, _, _ = self.extents(func)
        return asdict(choose_dense_tile(batch, blocks, self.registers))

    def apply(self, func, config: dict):
        return self.schedule(func, tile=DenseTile(**config))

    def candidates(self, func, tried: list, baseline: tuple | None = None):
        batch, blocks, _, _ = self.extents(func)
        pairs = [(rn, ro) for rn in divisors(batch) if rn <= 8 for ro in divisors(blocks)
                 if ro <= 16 and rn * ro <= self.registers - 8]
        for rn, ro in sorted(pairs, key=lambda p: (-p[0] * p[1], p[0])):
            yield {"rn": rn, "ro": ro}


RULES = {schedule_conv: ConvRule, schedule_conv_pool: ConvPoolRule,
         schedule_dense: DenseRule}


def apply_config(rule, func, config: dict):
    """``func`` scheduled by a tuning result: a MetaSchedule trace, or a tile of ``rule``."""
    if "trace" in config:
        from .metaschedule import apply_trace

        return apply_trace(func, config["trace"])
    return rule.apply(func, config)


def is_tile(config: dict) -> bool:
    return "trace" not in config


def rule_for(schedule):
    """The tunable rule behind a kernel's schedule, or None (a rule with no knobs)."""
    if isinstance(schedule, functools.partial) and schedule.func in RULES:
        return RULES[schedule.func](schedule)
    return None


def is_static(func: tirx.PrimFunc) -> bool:
    """Every buffer of the kernel has a fixed shape (a batch-specialised function's kernel)."""
    return all(isinstance(s, tirx.IntImm) for p in func.params for s in p.shape)

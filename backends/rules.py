"""What the backends know about each layer type, in one table keyed by the layer's class.

A layer type's front-end facts (keys, shape rule, parameters, numpy reference) live on its
class in ``cnncompiler.layers``; its backend facts live here, one entry per class:

- ``compute``: its tensor expression (``te_ops``), in the plain (N, C, *spatial) layout;
- ``gradient``: its backward (``te_grad``), or :data:`TRAINING_FORM` where the training step
  computes the layer its own way (batch statistics, dropout masks), or :data:`NOT_TRAINED`;
- ``cpu``: the CPU kernel family that schedules it (``cpu.plan``), ``generic`` for te_ops'
  compute under the fallback schedule;
- ``cuda``: the CUDA schedule family; ``dlight`` is TVM's generic GPU rules for all of them.

A layer is looked up by its class and then its bases, so one entry covers a family: every
point-wise layer (``layers.pointwise``) is computed and differentiated from its own
``forward`` and ``backward`` and needs no entry. A layer type without an entry cannot be
compiled (the error says so, never a quiet fallback), and tests/test_layer_rules.py fails for
any registered type that lacks one. A layer type defined outside the package gives its
compute and gradient as methods of its class (``te_compute``, ``te_gradient``: see
``layers.custom``), or declares an entry with :func:`declare`::

    from cnncompiler.backends.rules import declare
    declare(ChannelShuffle, compute=shuffle_compute, gradient=shuffle_gradient)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from cnncompiler.errors import CompileError
from cnncompiler.layers.activation import Dropout, Identity, PReLU, Softmax
from cnncompiler.layers.adaptive import AdaptiveAvgPool2d, AdaptiveMaxPool2d, StatsPool
from cnncompiler.layers.conv import ConvBase, LocallyConnected2d
from cnncompiler.layers.dense import Dense, Flatten
from cnncompiler.layers.detection import RoIAlign, RoIPool
from cnncompiler.layers.fused import Fused
from cnncompiler.layers.merge import Add, Concat
from cnncompiler.layers.norm import LRN, BatchNorm
from cnncompiler.layers.pointwise import Pointwise
from cnncompiler.layers.pool import (AvgPoolBase, BlurPool2d, GlobalAvgPool, GlobalMaxPool,
                                     LpPoolBase, MaxPoolBase)
from cnncompiler.layers.resize import Upsample
from cnncompiler.layers.slice import Slice

from . import te_adaptive as a
from . import te_detection as d
from . import te_grad as g
from . import te_ops as t

TRAINING_FORM = "the training step's own form"   # batch statistics, dropout masks
NOT_TRAINED = "not trained"                        # exists only in optimised inference graphs

# CPU kernel families (cpu.plan picks the kernel and layout for each)
CPU_FAMILIES = ("conv", "locally_connected", "dense", "pool", "blur_pool", "global_pool",
                "pointwise", "softmax", "batchnorm", "add", "concat", "passthrough", "fused",
                "roi", "channel_window", "generic")
# CUDA schedule families: dlight's rules, or a schedule of the family's own (cuda.CUDA_SCHEDULES)
CUDA_FAMILIES = ("dlight", "roi")


@dataclass(frozen=True)
class Rules:
    """Every field stated for every entry: a kernel family is chosen, never defaulted."""

    compute: Callable
    gradient: Callable | str
    cpu: str
    cuda: str

    def __post_init__(self):
        if self.cpu not in CPU_FAMILIES:
            raise ValueError(f"unknown CPU kernel family '{self.cpu}'; one of "
                             f"{', '.join(CPU_FAMILIES)}")
        if self.cuda not in CUDA_FAMILIES:
            raise ValueError(f"unknown CUDA schedule family '{self.cuda}'")


RULES: dict[type, Rules] = {
    ConvBase: Rules(t.lower_conv, g.grad_conv, cpu="conv", cuda="dlight"),
    Dense: Rules(t.lower_dense, g.grad_dense, cpu="dense", cuda="dlight"),
    LocallyConnected2d: Rules(t.lower_locally_connected2d, g.grad_locally_connected2d,
                              cpu="locally_connected", cuda="dlight"),
    MaxPoolBase: Rules(t.lower_maxpool, g.grad_maxpool, cpu="pool", cuda="dlight"),
    AvgPoolBase: Rules(t.lower_avgpool, g.grad_avgpool, cpu="pool", cuda="dlight"),
    LpPoolBase: Rules(t.lower_lppool, g.grad_lppool, cpu="pool", cuda="dlight"),
    GlobalAvgPool: Rules(t.lower_global_avgpool, g.grad_global_avgpool,
                         cpu="global_pool", cuda="dlight"),
    GlobalMaxPool: Rules(t.lower_global_maxpool, g.grad_global_maxpool,
                         cpu="global_pool", cuda="dlight"),
    BlurPool2d: Rules(t.lower_blurpool2d, g.grad_blurpool2d, cpu="blur_pool", cuda="dlight"),
    AdaptiveAvgPool2d: Rules(a.lower_adaptive_avgpool, a.grad_adaptive_avgpool,
                             cpu="generic", cuda="dlight"),
    AdaptiveMaxPool2d: Rules(a.lower_adaptive_maxpool, a.grad_adaptive_maxpool,
                             cpu="generic", cuda="dlight"),
    StatsPool: Rules(a.lower_stats_pool, a.grad_stats_pool, cpu="generic", cuda="dlight"),
    RoIPool: Rules(d.lower_roi_pool, d.grad_roi_pool, cpu="roi", cuda="roi"),
    RoIAlign: Rules(d.lower_roi_align, d.grad_roi_align, cpu="roi", cuda="roi"),
    Pointwise: Rules(t.lower_pointwise, g.grad_pointwise, cpu="pointwise", cuda="dlight"),
    # its slope is a parameter, read per channel from a plain vector: te_ops' compute
    PReLU: Rules(t.lower_pointwise, g.grad_prelu, cpu="generic", cuda="dlight"),
    Softmax: Rules(t.lower_softmax, g.grad_softmax, cpu="softmax", cuda="dlight"),
    BatchNorm: Rules(t.lower_batchnorm, TRAINING_FORM, cpu="batchnorm", cuda="dlight"),
    LRN: Rules(t.lower_lrn, g.grad_lrn, cpu="channel_window", cuda="dlight"),
    Flatten: Rules(t.lower_flatten, g.grad_flatten, cpu="generic", cuda="dlight"),
    Add: Rules(t.lower_add, g.grad_add, cpu="add", cuda="dlight"),
    Concat: Rules(t.lower_concat, g.grad_concat, cpu="concat", cuda="dlight"),
    Dropout: Rules(t.lower_passthrough, TRAINING_FORM, cpu="passthrough", cuda="dlight"),
    Identity: Rules(t.lower_passthrough, g.grad_passthrough, cpu="passthrough", cuda="dlight"),
    Upsample: Rules(t.lower_upsample, g.grad_upsample, cpu="generic", cuda="dlight"),
    Slice: Rules(t.lower_slice, g.grad_slice, cpu="generic", cuda="dlight"),
    Fused: Rules(t.lower_fused, NOT_TRAINED, cpu="fused", cuda="dlight"),
}


def declare(cls: type, *, compute: Callable, gradient: Callable | str = NOT_TRAINED,
            cpu: str = "generic", cuda: str = "dlight") -> Rules:
    """Declare the backend facts of a layer type (one defined outside the package, say):
    ``compute(layer, xs, args, out_shape)`` its TE compute, ``gradient(layer, xs, y, dy, args,
    out_shape) -> (dxs, dparams)`` its backward (see te_grad)."""
    rules = Rules(compute, gradient, cpu, cuda)
    RULES[cls] = rules
    return rules


def find_rules(cls: type) -> Rules | None:
    """The entry for ``cls`` or its nearest base that has one; a class that gives its own TE
    compute as a method (``te_compute``, ``te_gradient``: a layer type defined outside the
    package) is its own entry."""
    for klass in cls.__mro__:
        if klass in RULES:
            return RULES[klass]
        if "te_compute" in vars(klass):
            return _method_rules(klass)
    return None


def _method_rules(cls: type) -> Rules:
    def compute(layer, xs, args, out_shape):
        return layer.te_compute(xs, args, out_shape)

    def gradient(layer, xs, y, dy, args, out_shape):
        return layer.te_gradient(xs, y, dy, args, out_shape)

    trained = callable(getattr(cls, "te_gradient", None))
    return Rules(compute, gradient if trained else f"{cls.type_name} gives no te_gradient method",
                 cpu="generic", cuda="dlight")


def rules_for(layer, node: str | None = None) -> Rules:
    """The backend facts of ``layer``; a clear error when its type has none."""
    rules = find_rules(type(layer))
    if rules is None:
        where = f"layer '{node}' " if node else ""
        raise CompileError(f"{where}({layer.type_name}): no lowering to TVM for this layer "
                           "type; declare one with cnncompiler.backends.rules.declare "
                           "(see 'Custom layer types' in the README)")
    return rules


def gradient_of(layer, node: str) -> Callable:
    """The backward of ``layer``, or a clear error that it cannot be trained."""
    gradient = rules_for(layer, node).gradient
    if not callable(gradient):
        raise CompileError(f"layer '{node}' ({layer.type_name}) cannot be trained: "
                           f"{gradient}")
    return gradient

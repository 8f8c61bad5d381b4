"""What a layer type is: its keys, shape rule, parameters, cost and numpy reference, in one place.

A layer type is a frozen dataclass registered under the name a spec uses::

    @register("relu")
    class ReLU(Elementwise):
        \"\"\"Rectified linear unit. YAML: ``{type: relu}``\"\"\"
        def reference(self, xs, params):
            return np.maximum(xs[0], 0)

Shapes here are per sample, without the batch axis: (C, H, W) for 2-D nets, (C, T) for 1-D
nets, (F,) for vectors. References take and return batched arrays (N, *shape).
The lowering of a layer to TVM lives in the backends, not here: this package never imports tvm.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ..errors import ShapeError

Shape = tuple[int, ...]
INIT_PIECE = 1 << 20  # elements drawn at a time by ParamSpec.initial


@dataclass(frozen=True)
class ParamSpec:
    """One weight tensor of a layer: its shape, how a new one is initialised, and whether
    training updates it (batch-norm running statistics are buffers, not parameters)."""

    shape: Shape
    init: str = "fan_in_uniform"  # fan_in_uniform | zeros | ones | constant (``value``)
    fan_in: int = 1
    trainable: bool = True
    value: float = 0.0

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def initial(self, rng: np.random.Generator) -> np.ndarray:
        """PyTorch's default initialisation: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for conv and
        dense weights and biases (kaiming_uniform with a=sqrt(5)), ones and zeros for norms."""
        if self.init == "zeros":
            return np.zeros(self.shape, np.float32)
        if self.init == "ones":
            return np.ones(self.shape, np.float32)
        if self.init == "constant":
            return np.full(self.shape, self.value, np.float32)
        bound = 1.0 / math.sqrt(max(self.fan_in, 1))
        # drawn in float64 pieces into the float32 result: the same numbers as one draw of
        # the whole tensor (the generator's stream is sequential), without a float64 copy of
        # it; VGG-16's 103M-weight layer: 2.1 s -> 0.36 s
        out = np.empty(self.size, np.float32)
        for start in range(0, self.size, INIT_PIECE):
            piece = out[start:start + INIT_PIECE]
            piece[...] = rng.uniform(-bound, bound, piece.size)
        return out.reshape(self.shape)


@dataclass(frozen=True)
class Window:
    """How a layer maps input positions to output positions, per spatial axis, for the
    receptive field: each output sees ``kernel`` inputs (holes included) ``stride`` apart."""

    kernel: tuple[int, ...]
    stride: tuple[int, ...]


GLOBAL = Window((), ())  # sentinel: every output sees the whole input


BATCH = "N"  # the leading axis of a batch of samples (every input's, unless batched: false)


class ShapeNotes:
    """Warnings a shape rule raises without failing (a stride that leaves rows unread)."""

    def __init__(self) -> None:
        self.warnings: list[ShapeError] = []

    def warn(self, message: str, expected: str | None = None, fix: str | None = None) -> None:
        self.warnings.append(ShapeError(message, expected, fix))


class Layer:
    """Base of every layer type. Subclasses are frozen dataclasses made by :func:`register`."""

    type_name: ClassVar[str] = ""
    min_inputs: ClassVar[int] = 1
    max_inputs: ClassVar[int | None] = 1
    internal: ClassVar[bool] = False  # made by optimisation passes, not written in specs
    # its value is its input's at inference (dropout, identity): no kernel is made for it
    passthrough: ClassVar[bool] = False
    # may be named by ``activation:`` on a layer that takes one (relu, softmax, ...)
    is_activation: ClassVar[bool] = False
    # takes Keras's ``activation: relu`` key, written out as a layer of its own after it
    takes_activation: ClassVar[bool] = False

    # -- shape rule ---------------------------------------------------------------------
    def infer_shape(self, in_shapes: list[Shape], notes: ShapeNotes) -> Shape:
        raise NotImplementedError

    def leading_axis(self, in_leads: list[str]) -> str:
        """Whose rows the output's leading axis counts: ``BATCH`` (the samples of a batch), or
        the name of an input without a batch axis (the R boxes of ``rois``) that the layer
        works row by row on. Inputs of two kinds do not mix unless a layer says how (a RoI
        pool reads a batch of feature maps and gives one row per box)."""
        if any(lead != in_leads[0] for lead in in_leads):
            counted = ", ".join(dict.fromkeys(
                "the batch's samples" if lead == BATCH else f"the rows of '{lead}'"
                for lead in in_leads))
            raise ShapeError(f"its inputs count different things along their first axis "
                             f"({counted})", "inputs whose first axes count the same rows",
                             "join tensors of the same rows; a roi_pool or roi_align turns "
                             "feature maps of the batch into one row per box")
        return in_leads[0] if in_leads else BATCH

    # -- parameters and cost --------------------------------------------------------------
    def params(self, in_shapes: list[Shape]) -> dict[str, ParamSpec]:
        return {}

    def flops(self, in_shapes: list[Shape], out_shape: Shape) -> int:
        return 0

    def window(self, in_shapes: list[Shape]) -> Window | None:
        """None for layers that keep positions (element-wise, norms, merges)."""
        return None

    # -- numpy reference ----------------------------------------------------------------
    def reference(self, xs: list[np.ndarray], params: dict[str, np.ndarray]) -> np.ndarray:
        raise NotImplementedError

    # -- its TVM compute and gradient, for a layer type declared outside the package ----------
    # (cnnc's own layer types have theirs in backends/rules.py). Both import TVM inside:
    #   def te_compute(self, xs, args, out_shape) -> te.Tensor
    #       xs: the batched inputs as te tensors (N, C, *spatial), args: the prepared weights,
    #       out_shape: the checked per-sample output shape
    #   def te_gradient(self, xs, y, dy, args, out_shape) -> (dxs, {param: gradient})
    #       dxs: each input's gradient (None where an input needs none)

    def reference_train(self, xs: list[np.ndarray], params: dict[str, np.ndarray],
                        state: dict) -> np.ndarray:
        """Training-mode forward; defaults to inference. ``state`` carries what a layer
        changes or draws in training (running statistics, dropout masks)."""
        return self.reference(xs, params)

    def prepare(self, params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The compiled kernel's arguments from the layer's parameters, computed once when
        weights are loaded (a fused layer folds batch norm here). Default: the same."""
        return params

    def kernel_arg_shapes(self, in_shapes: list[Shape]) -> dict[str, Shape]:
        """The shapes of what :meth:`prepare` returns, by arithmetic (a layer that overrides
        ``prepare`` overrides this too; a test checks the two agree for every layer type)."""
        return {key: spec.shape for key, spec in self.params(in_shapes).items()}

    # -- as a step of a fused conv/dense epilogue (point-wise layers, batch norm, add) --------
    def epilogue(self, v, m, arg, residual):
        """This layer applied to one element ``v`` of the kernel's output, written in the
        operations of ``m`` (see ``layers.pointwise``); ``arg(key)`` reads a prepared
        argument at the element's channel, ``residual`` is the add's other input there."""
        raise NotImplementedError(f"{self.type_name} is not an epilogue step")

    def epilogue_args(self, params: dict[str, np.ndarray], channels: int) -> dict:
        """The prepared arguments of this layer as an epilogue step of ``channels``."""
        return self.prepare(params)

    def epilogue_arg_shapes(self, in_shapes: list[Shape]) -> dict[str, Shape]:
        """The shapes of what :meth:`epilogue_args` returns."""
        return self.kernel_arg_shapes(in_shapes)

    # -- introspection ----------------------------------------------------------------------
    @classmethod
    def keys(cls) -> dict[str, dataclasses.Field]:
        return {f.name: f for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else {}

    def settings(self) -> dict:
        """The layer's keys and values, as a spec would write them."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


LAYER_TYPES: dict[str, type[Layer]] = {}


def register(name: str, *, internal: bool = False):
    """Declare a layer type under the name specs use for it (a Python identifier)."""
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"layer type name {name!r} is not an identifier (e.g. 'channel_shuffle')")

    def wrap(cls):
        old = LAYER_TYPES.get(name)
        if old is not None and (old.__module__, old.__qualname__) != \
                (cls.__module__, cls.__qualname__):
            raise ValueError(f"layer type '{name}' is already declared by "
                             f"{old.__module__}.{old.__qualname__}; choose another name")
        cls = dataclass(frozen=True)(cls)
        cls.type_name = name
        cls.internal = internal
        LAYER_TYPES[name] = cls
        return cls

    return wrap


# -- shape helpers shared by the families ------------------------------------------------------

def expect_rank(shape: Shape, ranks: tuple[int, ...], what: str) -> None:
    if len(shape) not in ranks:
        names = {1: "(F,)", 2: "(C, T)", 3: "(C, H, W)"}
        want = " or ".join(names.get(r, f"rank {r}") for r in ranks)
        raise ShapeError(f"input has shape {fmt_shape(shape)}",
                         f"{what} expects {want} per sample")


def sample_axis(axis: int, rank: int, fix: str) -> int:
    """``axis`` (counting the batch axis as 0, negative from the end, as torch's dim) as an axis
    of one sample's shape of ``rank``; a ShapeError, with ``fix``, for the batch axis or one out
    of range."""
    full = rank + 1
    if not -full <= axis < full or axis % full == 0:
        raise ShapeError(f"axis {axis} is not an axis of a sample of rank {rank}",
                         f"an axis from 1 to {rank} (1 = channels), or -1 to -{rank}", fix)
    return axis % full - 1

def fmt_shape(shape: Shape) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"

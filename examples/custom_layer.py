"""Two layer types declared outside cnnc, in this one file, then checked, compiled (CPU, and
CUDA where nvcc is installed), fused and trained like cnnc's own:

- ``softsign``, x / (1 + |x|): a point-wise layer. Its forward and backward are written once,
  in the operations of ``m`` (numpy for the reference, TVM for the kernels), and that is all:
  it fuses into the epilogue of the conv before it and trains.
- ``channel_shuffle``, ShuffleNet's channel permutation: any other layer gives its TVM compute
  and gradient as methods (``te_compute``, ``te_gradient``), importing TVM inside them.

    python examples/custom_layer.py                       # about half a minute on two cores
    cnnc --layers examples/custom_layer.py check net.yaml   # a spec that uses them, from the CLI
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from cnncompiler.errors import ShapeError
from cnncompiler.layers import Layer, Pointwise, option, positive_int, register


@register("softsign")
class Softsign(Pointwise):
    """x / (1 + |x|), PyTorch's Softsign. YAML: ``{type: softsign}``."""

    cost_per_element = 3

    def forward(self, x, m, arg):
        return x / (1 + m.where(x < 0, -x, x))

    def backward(self, x, y, dy, m, arg):
        d = 1 + m.where(x < 0, -x, x)
        return dy / (d * d)


@register("channel_shuffle")
class ChannelShuffle(Layer):
    """ShuffleNet's channel shuffle: the channels, seen as ``groups`` rows of C/groups, are
    read column by column, so each group's output mixes every group's input.

    YAML: ``{type: channel_shuffle, groups: 2}``.
    """

    groups: int = option(positive_int, default=2)

    def infer_shape(self, in_shapes, notes):
        shape = in_shapes[0]
        if len(shape) < 2 or shape[0] % self.groups:
            raise ShapeError(f"input has shape {shape}",
                             f"(C, ...) with C a multiple of groups ({self.groups})",
                             "use groups that divide the channel count")
        return shape

    def reference(self, xs, params):
        x = xs[0]
        n, c = x.shape[:2]
        split = x.reshape(n, self.groups, c // self.groups, *x.shape[2:])
        return np.ascontiguousarray(split.swapaxes(1, 2)).reshape(x.shape)

    def te_compute(self, xs, args, out_shape):
        from tvm import te

        x, groups = xs[0], self.groups
        per_group = int(x.shape[1]) // groups
        # output channel i * groups + g is input channel g * per_group + i
        return te.compute(x.shape, lambda n, c, *rest: x[(
            n, (c % groups) * per_group + c // groups, *rest)], name="channel_shuffle")

    def te_gradient(self, xs, y, dy, args, out_shape):
        from tvm import te

        x, groups = xs[0], self.groups
        per_group = int(x.shape[1]) // groups
        # the inverse permutation: input channel g * per_group + i went to i * groups + g
        dx = te.compute(x.shape, lambda n, c, *rest: dy[(
            n, (c % per_group) * groups + c // per_group, *rest)], name="channel_shuffle_dx")
        return [dx], {}


SPEC = """\
name: shuffle_demo
input: [3, 12, 12]
layers:
  - {name: conv1, type: conv2d, filters: 8, kernel: 3, padding: 1, bias: false}
  - {name: bn1, type: batchnorm}
  - {name: act1, type: softsign}
  - {name: shuffle, type: channel_shuffle, groups: 4}
  - {name: conv2, type: conv2d, filters: 8, kernel: 3, padding: 1, groups: 4}
  - {name: act2, type: softsign}
  - {name: pool, type: global_avgpool}
  - {name: flatten, type: flatten}
  - {name: fc, type: dense, units: 3}
"""


def main() -> int:
    import cnncompiler as cc
    from cnncompiler.reference import run_reference

    work = Path(tempfile.mkdtemp(prefix="cnnc-custom-"))
    try:
        spec = work / "shuffle_demo.yaml"
        spec.write_text(SPEC)
        graph, _ = cc.check(spec)
        print(f"checked {graph.graph['name']}: output {graph.nodes['fc']['shape']}")

        model = cc.compile(spec, output_dir=work / "cpu")
        fused = {n: d["layer"].describe() for n, d in model.optimized.nodes(data=True)
                 if hasattr(d["layer"], "describe")}
        print(f"fused kernels: {fused}")

        rng = np.random.default_rng(0)
        x = rng.standard_normal((6, 3, 12, 12)).astype(np.float32)
        want = run_reference(model.graph, x, model.params)["fc"]
        error = float(np.abs(model.predict(x) - want).max())
        print(f"compiled output vs numpy reference: max difference {error:.2e}")

        labels = (x.mean(axis=(1, 2, 3)) > 0).astype(np.int64) + (x[:, 0].mean(axis=(1, 2)) > 0)
        model.set_optimizer({"type": "sgd", "lr": 0.1, "momentum": 0.9})
        losses = [model.train_step(x, labels) for _ in range(20)]
        print(f"trained 20 steps: loss {losses[0]:.4f} -> {losses[-1]:.4f}")

        if shutil.which("nvcc"):
            cc.compile(spec, target="cuda", output_dir=work / "cuda")
            print("compiled for CUDA: device code built")
        else:
            print("compiled for CUDA: skipped (nvcc is not installed)")
        ok = error < 1e-4 and losses[-1] < losses[0]
        return 0 if ok else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

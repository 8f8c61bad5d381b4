"""Darknet import: small cfgs written here in Darknet's format (a darknet19-like classifier, a
tiny-YOLO-like backbone with a size-2 stride-1 max pool, a residual net with shortcuts, a
YOLOv3-tiny-like net with route, upsample and two heads, a YOLOv4-tiny-like net whose routes
take channel groups, and a resnet whose shortcuts join maps of different shapes) are imported
and checked; a ``.weights`` file written here loads, and the compiled model computes what a
numpy reading of Darknet's layers computes; sections and keys cnnc cannot express are refused
with their line.
"""

from __future__ import annotations

import numpy as np
import pytest

import cnncompiler as cc
from cnncompiler.cli import main
from cnncompiler.errors import CnncError
from cnncompiler.interop import read_model
from cnncompiler.interop.darknet_import import import_darknet, parse_cfg
from cnncompiler.runtime.weights import read_weights

from compile_helpers import as_dict

NET = "[net]\n# training settings, not part of the spec\nbatch=64\nsubdivisions=8\n" \
      "momentum=0.9\ndecay=0.0005\nwidth={w}\nheight={h}\nchannels=3\n\n"


def conv(filters, size=3, stride=1, bn=1, activation="leaky", extra=""):
    return (f"[convolutional]\nbatch_normalize={bn}\nfilters={filters}\nsize={size}\n"
            f"stride={stride}\npad=1\nactivation={activation}\n{extra}\n")


def pool(size=2, stride=2):
    return f"[maxpool]\nsize={size}\nstride={stride}\n\n"


DARKNET19 = (NET.format(w=32, h=32) + conv(8) + pool() + conv(16) + pool() + conv(32)
             + conv(16, size=1) + conv(32) + pool() + conv(10, size=1, bn=0, activation="linear")
             + "[avgpool]\n\n[softmax]\ngroups=1\n\n[cost]\ntype=sse\n")
TINY_YOLO = (NET.format(w=16, h=16) + conv(4) + pool() + conv(8) + pool() + conv(8)
             + pool(2, 1) + conv(16) + conv(15, size=1, bn=0, activation="linear")
             + "[region]\nanchors=1,1, 2,2, 3,3\nclasses=0\nnum=3\n")
RESNET = (NET.format(w=16, h=16) + conv(8) + conv(8, activation="mish")
          + conv(8, activation="linear")
          + "[shortcut]\nfrom=-3\nactivation=leaky\n\n" + conv(16, stride=2) + conv(16, size=1)
          + "; a residual of the strided block\n[shortcut]\nfrom=-2\nactivation=linear\n\n"
          + "[avgpool]\n\n[dropout]\nprobability=.5\n\n"
          + "[connected]\noutput=5\nactivation=linear\n\n[softmax]\n")
YOLOV3_TINY = (NET.format(w=32, h=32) + conv(8) + pool() + conv(16) + pool() + conv(32) + pool()
               + conv(32) + pool(2, 1) + conv(64, extra="stopbackward=1")
               + conv(16, size=1) + conv(32)
               + conv(21, size=1, bn=0, activation="linear")
               + "[yolo]\nmask=3,4,5\nanchors=1,1, 2,2, 3,3, 4,4, 5,5, 6,6\nclasses=2\nnum=6\n\n"
               + "[route]\nlayers = -4\n\n" + conv(8, size=1) + "[upsample]\nstride=2\n\n"
               + "[route]\nlayers = -1, 4\n\n" + conv(32)
               + conv(21, size=1, bn=0, activation="linear")
               + "[yolo]\nmask=0,1,2\nanchors=1,1, 2,2, 3,3, 4,4, 5,5, 6,6\nclasses=2\nnum=6\n")
# YOLOv4-tiny's CSP blocks: a route takes the second half of a layer's channels (groups=2,
# group_id=1), and of two layers at once; a quarter of a layer too
YOLOV4_TINY = (NET.format(w=32, h=32) + conv(8, stride=2) + conv(16, stride=2) + conv(16)
               + "[route]\nlayers=-1\ngroups=2\ngroup_id=1\n\n" + conv(8) + conv(8)
               + "[route]\nlayers = -1,-2\n\n" + conv(16, size=1)
               + "[route]\nlayers = -6,-1\n\n"
               + "[route]\nlayers = -1, -2\ngroups=4\ngroup_id=2\n\n" + pool() + conv(16)
               + conv(21, size=1, bn=0, activation="linear")
               + "[yolo]\nmask=0,1,2\nanchors=1,1, 2,2, 3,3\nclasses=2\nnum=3\n")
# Darknet's resnet18/resnet50 shortcuts between maps of different shapes: from a larger map with
# fewer channels (stride 2), from one with more channels, from a larger map cropped (6x6 onto
# 4x4: stride 1), and one sampled with a stride (12x12 onto 2x2: rows and columns 0 and 6)
RESNET_SHAPES = (NET.format(w=24, h=24) + conv(8) + pool() + conv(8) + conv(8, activation="linear")
                 + "[shortcut]\nfrom=-3\nactivation=leaky\n\n"
                 + conv(16, stride=2) + conv(16, activation="linear")
                 + "[shortcut]\nfrom=-3\nactivation=leaky\n\n"
                 + conv(8, size=1, activation="linear") + "[shortcut]\nfrom=-2\n\n"
                 + "[maxpool]\nsize=3\nstride=1\npadding=0\n\n" + "[shortcut]\nfrom=-2\n\n"
                 + pool() + "[shortcut]\nfrom=4\nactivation=leaky\n\n"
                 + "[avgpool]\n\n[connected]\noutput=5\nactivation=linear\n\n[softmax]\n")

# Every float of the .weights file is one of the spec's weights. A convolution with batch norm
# holds filters * in * k * k + 4 * filters (beta, gamma, mean, variance); without, + filters.
CASES = {
    # 3->8: 216 + 32 = 248; 8->16: 1152 + 64 = 1216; 16->32: 4608 + 128 = 4736;
    # 32->16 1x1: 512 + 64 = 576; 16->32: 4736; 32->10 1x1 with bias: 320 + 10 = 330
    "darknet19": (DARKNET19, 248 + 1216 + 4736 + 576 + 4736 + 330, {"softmax10": (10,)}),
    # 3->4: 108 + 16 = 124; 4->8: 288 + 32 = 320; 8->8: 576 + 32 = 608; 8->16: 1152 + 64 = 1216;
    # 16->15 1x1 with bias: 240 + 15 = 255; the stride-1 pool keeps 4x4
    "tiny_yolo": (TINY_YOLO, 124 + 320 + 608 + 1216 + 255, {"conv7": (15, 4, 4)}),
    # 3->8: 248; 8->8 twice: 576 + 32 = 608 each; 8->16 stride 2: 1216; 16->16 1x1: 256 + 64 =
    # 320; connected 16->5: 80 + 5 = 85
    "resnet": (RESNET, 248 + 608 + 608 + 1216 + 320 + 85, {"softmax10": (5,)}),
    # 3->8: 248; 8->16: 1216; 16->32: 4736; 32->32: 9216 + 128 = 9344; 32->64: 18432 + 256 =
    # 18688; 64->16 1x1: 1024 + 64 = 1088; 16->32: 4736; 32->21 1x1 with bias: 672 + 21 = 693;
    # 16->8 1x1: 128 + 32 = 160; (8 + 32)->32: 11520 + 128 = 11648; 32->21 1x1: 693
    "yolov3_tiny": (YOLOV3_TINY, 248 + 1216 + 4736 + 9344 + 18688 + 1088 + 4736 + 693 + 160
                    + 11648 + 693, {"conv11": (21, 4, 4), "conv18": (21, 8, 8)}),
    # 3->8 s2: 248; 8->16 s2: 1216; 16->16: 2304 + 64 = 2368; 8->8 twice: 608 each;
    # (8 + 8)->16 1x1: 256 + 64 = 320; the quarter-route takes 8 of layer 8's 32 channels and
    # 4 of layer 7's 16: 12->16: 1728 + 64 = 1792; 16->21 1x1 with bias: 357
    "yolov4_tiny": (YOLOV4_TINY, 248 + 1216 + 2368 + 608 + 608 + 320 + 1792 + 357,
                    {"conv12": (21, 4, 4)}),
    # 3->8: 248; 8->8 twice: 608 each; 8->16 s2: 1216; 16->16: 2304 + 64 = 2368; 16->8 1x1:
    # 128 + 32 = 160; connected 8->5: 40 + 5 = 45
    "resnet_shapes": (RESNET_SHAPES, 248 + 608 + 608 + 1216 + 2368 + 160 + 45,
                      {"softmax16": (5,)}),
}


def weight_segments(text: str) -> list[tuple[str, int]]:
    """What the floats of a .weights file for ``text`` are, in order, worked out from the cfg
    alone: (what, how many) per stretch."""
    channels, segments, widths = 3, [], []
    for section in parse_cfg(text, "<cfg>")[1:]:
        keys = {k: v for k, (v, _) in section.keys.items()}
        if section.kind == "convolutional":
            f, k = int(keys["filters"]), int(keys["size"])
            segments.append(("bias", f))
            if keys["batch_normalize"] == "1":
                segments += [("gamma", f), ("mean", f), ("variance", f)]
            segments.append(("kernel", f * channels * k * k))
            channels = f
        elif section.kind == "connected":
            f = int(keys["output"])
            segments += [("bias", f), ("weight", f * channels)]
            channels = f
        elif section.kind == "route":
            refs = [int(v) for v in keys["layers"].split(",")]
            channels = sum(widths[len(widths) + r if r < 0 else r] for r in refs) // \
                int(keys.get("groups", 1))
        widths.append(channels)
    return segments


def weight_floats(text: str) -> int:
    return sum(size for _, size in weight_segments(text))


def write_weights_file(path, text: str, seed: int, version=(0, 2, 0), count=None) -> np.ndarray:
    """A .weights file for ``text`` (or of ``count`` floats): values of either sign between
    0.05 and 0.55 in size, batch-norm variances positive."""
    rng = np.random.default_rng(seed)
    segments = weight_segments(text) if count is None else [("any", count)]
    values = []
    for what, size in segments:
        v = rng.uniform(0.05, 0.55, size)
        values.append(v if what == "variance" else v * rng.choice([-1, 1], size))
    values = np.concatenate(values).astype("<f4")
    seen = np.array([640], "<i8" if version[0] * 10 + version[1] >= 2 else "<i4")
    with open(path, "wb") as f:
        f.write(np.array(version, "<i4").tobytes() + seen.tobytes() + values.tobytes())
    return values


# -- a numpy reading of Darknet's layers, independent of the importer ------------------------------

def np_conv(x, w, stride, pad):
    n, c, h, wd = x.shape
    f, _, k, _ = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    oh, ow = (h + 2 * pad - k) // stride + 1, (wd + 2 * pad - k) // stride + 1
    y = np.zeros((n, f, oh, ow))
    for i in range(k):
        for j in range(k):
            patch = xp[:, :, i:i + stride * oh:stride, j:j + stride * ow:stride]
            y += np.einsum("nchw,fc->nfhw", patch, w[:, :, i, j])
    return y


def np_maxpool(x, size, stride, padding=None):
    """Darknet: padding (default size - 1) in all, padding // 2 of it before; -inf outside."""
    padding = size - 1 if padding is None else padding
    before = padding // 2
    n, c, h, w = x.shape
    oh, ow = (h + padding - size) // stride + 1, (w + padding - size) // stride + 1
    xp = np.full((n, c, h + padding + stride, w + padding + stride), -np.inf)
    xp[:, :, before:before + h, before:before + w] = x
    windows = [xp[:, :, i:i + stride * oh:stride, j:j + stride * ow:stride]
               for i in range(size) for j in range(size)]
    return np.max(windows, axis=0)


def np_shortcut(out: np.ndarray, add: np.ndarray) -> np.ndarray:
    """Darknet's shortcut of ``add`` (C1, H1, W1) onto ``out`` (C2, H2, W2): over the first
    min(C1, C2) channels and min(H1, H2) x min(W1, W2) positions, out at (j, i) * sample gains
    add at (j, i) * stride, stride = W1 // W2 and sample = W2 // W1 (each at least 1)."""
    (c2, h2, w2), (c1, h1, w1) = out.shape[1:], add.shape[1:]
    stride, sample = max(w1 // w2, 1), max(w2 // w1, 1)
    assert stride == max(h1 // h2, 1) and sample == max(h2 // h1, 1)
    c, h, w = min(c1, c2), min(h1, h2), min(w1, w2)
    out = out.copy()
    out[:, :c, 0:h * sample:sample, 0:w * sample:sample] += \
        add[:, :c, 0:h * stride:stride, 0:w * stride:stride]
    return out


def np_route(sources: list[np.ndarray], groups: int, group_id: int) -> np.ndarray:
    """Darknet's route: of each sample of each source, the group_id-th of ``groups`` equal
    stretches of its values in memory order, joined."""
    parts = []
    for x in sources:
        flat = x.reshape(len(x), -1)
        size = flat.shape[1] // groups
        part = flat[:, size * group_id:size * (group_id + 1)]
        parts.append(part.reshape(len(x), x.shape[1] // groups, *x.shape[2:]))
    return np.concatenate(parts, axis=1)


ACTIVATE = {"leaky": lambda v: np.where(v > 0, v, 0.1 * v), "linear": lambda v: v,
            "mish": lambda v: v * np.tanh(np.logaddexp(0, v))}


def darknet_forward(text: str, values: np.ndarray, x: np.ndarray) -> list[np.ndarray]:
    """The outputs of every layer, in float64, reading ``values`` in Darknet's order; and the
    maps each head reads."""
    at = 0

    def take(*shape):
        nonlocal at
        size = int(np.prod(shape))
        out = values[at:at + size].astype(np.float64).reshape(shape)
        at += size
        return out

    outs, heads = [], []
    for section in parse_cfg(text, "<cfg>")[1:]:
        keys = {k: v for k, (v, _) in section.keys.items()}
        kind = section.kind
        if kind in ("yolo", "region", "cost"):
            heads.append(x)
            outs.append(None)
            continue
        if kind == "convolutional":
            f, k, s = int(keys["filters"]), int(keys["size"]), int(keys["stride"])
            bias = take(f)
            if keys["batch_normalize"] == "1":
                gamma, mean, var = take(f), take(f), take(f)
            w = take(f, x.shape[1], k, k)
            x = np_conv(x, w, s, k // 2)
            if keys["batch_normalize"] == "1":
                x = (x - mean[:, None, None]) / np.sqrt(var[:, None, None] + 1e-5) * \
                    gamma[:, None, None]
            x = ACTIVATE[keys["activation"]](x + bias[:, None, None])
        elif kind == "maxpool":
            padding = int(keys["padding"]) if "padding" in keys else None
            x = np_maxpool(x, int(keys["size"]), int(keys["stride"]), padding)
        elif kind == "avgpool":
            x = x.mean(axis=(2, 3))
        elif kind == "connected":
            units = int(keys["output"])
            bias = take(units)
            w = take(units, x[0].size)
            x = ACTIVATE[keys["activation"]](x.reshape(len(x), -1) @ w.T + bias)
        elif kind == "softmax":
            z = np.exp(x - x.max(axis=1, keepdims=True))
            x = z / z.sum(axis=1, keepdims=True)
        elif kind == "shortcut":
            ref = int(keys["from"])
            x = np_shortcut(x, outs[len(outs) + ref if ref < 0 else ref])
            x = ACTIVATE[keys.get("activation", "linear")](x)
        elif kind == "route":
            refs = [int(v) for v in keys["layers"].split(",")]
            x = np_route([outs[len(outs) + r if r < 0 else r] for r in refs],
                         int(keys.get("groups", 1)), int(keys.get("group_id", 0)))
        elif kind == "upsample":
            s = int(keys["stride"])
            x = x.repeat(s, axis=2).repeat(s, axis=3)
        outs.append(x)
    assert at == values.size
    return heads + ([] if outs[-1] is None else [x])


# -- the tests -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """Each case's cfg and weights written, imported and its spec checked."""
    out = {}
    for name, (text, count, _) in CASES.items():
        folder = tmp_path_factory.mktemp(name)
        cfg = folder / f"{name}.cfg"
        cfg.write_text(text)
        values = write_weights_file(folder / f"{name}.weights", text, seed=len(name))
        spec, params = import_darknet(cfg)
        spec_path = folder / f"{name}.yaml"
        spec_path.write_text(spec)
        graph, warnings = cc.check(spec_path)
        out[name] = (spec_path, graph, warnings, params, values)
    return out


@pytest.mark.parametrize("name", sorted(CASES))
def test_cfg_imports_and_checks_clean(imported, name):
    text, count, shapes = CASES[name]
    _, graph, warnings, params, _ = imported[name]
    assert not warnings, [w.format() for w in warnings]
    assert weight_floats(text) == count
    assert sum(a.size for a in params.values()) == count
    assert graph.graph["outputs"] == list(shapes)
    for output, shape in shapes.items():
        assert tuple(graph.nodes[output]["shape"]) == shape


def test_the_spec_reads_as_darknet_numbers_its_layers(imported):
    spec = imported["yolov3_tiny"][0].read_text()
    assert "- {name: maxpool7, type: maxpool2d, kernel: 2, stride: 1, padding: [[0, 1], [0, 1]]}" \
        in spec
    assert "- {name: route13, type: identity, inputs: [conv9.leaky_relu]}" in spec
    assert "- {name: route16, type: concat, inputs: [upsample15, conv4.leaky_relu]}" in spec
    assert "- {name: upsample15, type: upsample}" in spec
    assert "[yolo]: layer 12 is a yolo head" in spec


def test_route_groups_and_shortcuts_of_other_shapes_are_slices(imported):
    spec = imported["yolov4_tiny"][0].read_text()
    assert "- {name: route3, type: slice, start: 8}" in spec
    assert "- {name: route9.group0, type: slice, start: 16, stop: 24}" in spec
    assert "- {name: route9.group1, type: slice, start: 8, stop: 12, inputs: " \
        "[conv7.leaky_relu]}" in spec
    spec = imported["resnet_shapes"][0].read_text()
    for line in [
            "{name: shortcut7.from.rows, type: slice, axis: rows, stop: 11, step: 2, "
            "inputs: [shortcut4.leaky_relu]}",
            "{name: shortcut7.from.cols, type: slice, axis: cols, stop: 11, step: 2}",
            "{name: shortcut7.head, type: slice, stop: 8, inputs: [conv6.bn]}",
            "{name: shortcut7.sum, type: add, inputs: [shortcut7.head, shortcut7.from.cols]}",
            "{name: shortcut7.tail, type: slice, start: 8, inputs: [conv6.bn]}",
            "{name: shortcut7, type: concat, inputs: [shortcut7.sum, shortcut7.tail]}",
            "{name: shortcut9.from.channels, type: slice, stop: 8, inputs: "
            "[shortcut7.leaky_relu]}",
            "{name: shortcut11.from.rows, type: slice, axis: rows, stop: 4, inputs: [shortcut9]}",
            "{name: shortcut13.from.rows, type: slice, axis: rows, stop: 7, step: 6, "
            "inputs: [shortcut4.leaky_relu]}"]:
        assert f"  - {line}\n" in spec, line


@pytest.mark.tvm
@pytest.mark.parametrize("name", sorted(CASES))
def test_compiled_model_computes_what_darknet_does(imported, name):
    spec_path, graph, _, params, values = imported[name]
    x = np.random.default_rng(3).standard_normal((2, *graph.graph["input_shape"]))
    model = cc.compile(spec_path)
    model.load_params(params)
    got = as_dict(model.predict(x.astype(np.float32)), model.output_names)
    want = darknet_forward(CASES[name][0], values, x)
    for output, expected in zip(CASES[name][2], want):
        expected = expected.reshape(got[output].shape)
        scale = max(1.0, float(np.abs(expected).max()))
        assert np.isfinite(expected).all()
        np.testing.assert_allclose(got[output], expected, rtol=1e-5, atol=1e-5 * scale,
                                   err_msg=f"{name}: {output}")


def test_cnnc_import_reads_the_weights_beside_the_cfg(tmp_path, capsys):
    text, count, _ = CASES["tiny_yolo"]
    (tmp_path / "tiny.cfg").write_text(text)
    write_weights_file(tmp_path / "tiny.weights", text, seed=1, version=(0, 1, 0))
    assert main(["import", str(tmp_path / "tiny.cfg"), "-o", str(tmp_path / "tiny.yaml")]) == 0
    captured = capsys.readouterr()
    assert f"{count:,} weights)" in captured.out
    line = text.splitlines().index("[region]") + 1
    assert f"tiny.cfg:{line}: [region]: layer 8 is a region head, not converted" in captured.err
    params = read_weights(tmp_path / "tiny.safetensors")
    assert sum(a.size for a in params.values()) == count
    cc.check(tmp_path / "tiny.yaml")


def test_cnnc_import_takes_weights_named_by_a_flag(tmp_path, capsys):
    text, count, _ = CASES["resnet"]
    (tmp_path / "res.cfg").write_text(text)
    write_weights_file(tmp_path / "trained.weights", text, seed=2)
    assert main(["import", str(tmp_path / "res.cfg"), "-o", str(tmp_path / "res.yaml"),
                 "--darknet-weights", str(tmp_path / "trained.weights")]) == 0
    assert f"{count:,} weights)" in capsys.readouterr().out
    assert main(["import", str(tmp_path / "res.cfg"), "-o", str(tmp_path / "other.yaml"),
                 "--caffemodel", str(tmp_path / "trained.weights")]) == 1
    assert "--caffemodel gives a Caffe net's weights; this model is not a Caffe net" in \
        capsys.readouterr().err


def test_without_weights_the_spec_comes_alone(tmp_path):
    (tmp_path / "net.cfg").write_text(RESNET)
    spec, params = read_model(tmp_path / "net.cfg")
    assert params == {} and "type: add, inputs: [conv2.bn, conv0.leaky_relu]" in spec


def test_weights_of_another_cfg_are_refused(tmp_path):
    (tmp_path / "net.cfg").write_text(RESNET)
    write_weights_file(tmp_path / "net.weights", RESNET, seed=0, count=CASES["resnet"][1] + 3)
    with pytest.raises(CnncError, match="3 floats are left over after the last layer"):
        import_darknet(tmp_path / "net.cfg")
    write_weights_file(tmp_path / "short.weights", RESNET, seed=0, count=500)
    with pytest.raises(CnncError, match="ends after 500 floats, while conv1's kernel needs 576 "
                                        "from float 280"):
        import_darknet(tmp_path / "net.cfg", weights=tmp_path / "short.weights")


REFUSED = [
    ("[local]\nsize=3\n", r"net.cfg:10: \[local\]: layer 1: cnnc cannot convert a \[local\] "
                          "section"),
    ("[route]\nlayers=-1\ngroups=2\ngroup_id=1\n",
     r"net.cfg:12: \[route\]: groups=2 does not divide the 3 channels of \(3, 8, 8\); "
     "Darknet's part would cut through a channel"),
    ("[route]\nlayers=-1\ngroups=2\ngroup_id=2\n",
     r"net.cfg:13: \[route\]: groups=2, group_id=2: Darknet takes group group_id \(0 to "
     r"groups - 1\)"),
    ("[maxpool]\nsize=2\nstride=2\n\n[upsample]\nstride=2\n\n[shortcut]\nfrom=-2\n",
     r"net.cfg:18: \[shortcut\]: adds a map of shape \(3, 4, 4\) onto one of shape "
     r"\(3, 8, 8\); Darknet adds a smaller map into every"),
    ("[maxpool]\nsize=2\nstride=2\n\n[maxpool]\nsize=2\nstride=2\n\n[shortcut]\nfrom=-1,-2\n",
     r"net.cfg:19: \[shortcut\]: adds layers of shapes \(3, 2, 2\), \(3, 4, 4\) to one of "
     r"shape \(3, 2, 2\); cnnc adds several layers of one shape, or one of another shape"),
    ("[convolutional]\nfilters=4\nsize=1\nactivation=selu\n",
     r"net.cfg:13: \[convolutional\]: activation=selu is not supported; cnnc converts leaky"),
    ("[shortcut]\nfrom=-5\n", r"net.cfg:11: \[shortcut\]: from names layer -5, which is layer "
                              r"-4; only the layers before this one \(0 to 0\) can be read"),
    ("[maxpool]\nsize=2\nstride=2\nstride_x=1\n",
     r"net.cfg:13: \[maxpool\]: stride_x=1 is not supported"),
    ("[convolutional]\nfilters=4\nsize=1\nflipped=1\n",
     r"net.cfg:13: \[convolutional\]: the key 'flipped' is not one cnnc reads"),
]


@pytest.mark.parametrize("section,message", REFUSED, ids=[r[0][1:6] for r in REFUSED])
def test_what_cnnc_cannot_express_is_refused_with_its_line(tmp_path, section, message):
    text = "[net]\nwidth=8\nheight=8\nchannels=3\n\n" + "[maxpool]\nsize=2\nstride=1\n\n" + \
        section
    (tmp_path / "net.cfg").write_text(text)
    with pytest.raises(CnncError, match=message):
        import_darknet(tmp_path / "net.cfg")


def test_cfg_syntax_errors_name_the_line(tmp_path):
    for text, message in [("width=8\n[net]\n", "net.cfg:1: key 'width' before the first"),
                          ("[net]\nwidth 8\n", "net.cfg:2: 'width 8' is neither"),
                          ("[convolutional]\n", "begins with a \\[net\\] section"),
                          ("[net]\nwidth=8\nwidth=9\n", "net.cfg:3: 'width' is given twice"),
                          ("[net]\nwidth=8\nheight=8\n", r"net.cfg:1: \[net\]: channels, "
                                                        r"height and width are \(0, 8, 8\)")]:
        (tmp_path / "net.cfg").write_text(text)
        with pytest.raises(CnncError, match=message):
            import_darknet(tmp_path / "net.cfg")

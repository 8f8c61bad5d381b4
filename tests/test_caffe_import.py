"""Caffe import: classic deploy nets (LeNet, CaffeNet, GoogLeNet-style inception modules, a
ResNet-style block) read into specs whose parameter counts are worked out by hand from the Caffe
definitions; the old input forms; train-only layers skipped with a note; refusals naming the
layer, its type and its prototxt line; and a caffemodel written here, compiled, against a numpy
computation of Caffe's own definitions."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

import cnncompiler
from cnncompiler.cli import main
from cnncompiler.graph.summary import summarize
from cnncompiler.interop import read_model
from cnncompiler.interop.caffe_import import import_caffe, read_caffemodel
from cnncompiler.runtime.weights import read_weights

DATA = Path(__file__).parent / "data" / "caffe"


def checked(tmp_path, text: str, name: str = "net"):
    spec = tmp_path / f"{name}.yaml"
    spec.write_text(text)
    graph, _ = cnncompiler.check(spec)
    return graph


def write_prototxt(tmp_path, text: str, name: str = "net") -> Path:
    path = tmp_path / f"{name}.prototxt"
    path.write_text(text)
    return path


# -- classic nets, parameters counted by hand ------------------------------------------------------

# Each weighted layer is out * in/group * kh * kw, plus out biases.
CLASSIC = {
    # conv1 20*1*5*5+20 = 520; conv2 50*20*5*5+50 = 25,050; ip1 (50*4*4 = 800 in)
    # 500*800+500 = 400,500; ip2 10*500+10 = 5,010
    "lenet": (520 + 25_050 + 400_500 + 5_010, [10], {"pool2": [50, 4, 4]}),
    # conv1 96*3*11*11+96 = 34,944; conv2 256*48*5*5+256 = 307,456 (group 2);
    # conv3 384*256*3*3+384 = 885,120; conv4 384*192*3*3+384 = 663,936 (group 2);
    # conv5 256*192*3*3+256 = 442,624 (group 2); fc6 4096*9216+4096 = 37,752,832;
    # fc7 4096*4096+4096 = 16,781,312; fc8 1000*4096+1000 = 4,097,000.
    # 227 -> conv1 (227-11)/4+1 = 55 -> pool1 ceil(52/2)+1 = 27 -> pool2 ceil(24/2)+1 = 13
    # -> pool5 ceil(10/2)+1 = 6
    "caffenet": (34_944 + 307_456 + 885_120 + 663_936 + 442_624 + 37_752_832 + 16_781_312
                 + 4_097_000, [1000], {"pool1": [96, 27, 27], "pool2": [256, 13, 13],
                                       "pool5": [256, 6, 6]}),
    # 3a from 192: 1x1 192*64+64 = 12,352; 3x3_reduce 192*96+96 = 18,528;
    # 3x3 96*128*9+128 = 110,720; 5x5_reduce 192*16+16 = 3,088; 5x5 16*32*25+32 = 12,832;
    # pool_proj 192*32+32 = 6,176: 163,696, giving 64+128+32+32 = 256 channels.
    # 3b from 256: 1x1 256*128+128 = 32,896; 3x3_reduce 32,896; 3x3 128*192*9+192 = 221,376;
    # 5x5_reduce 256*32+32 = 8,224; 5x5 32*96*25+96 = 76,896; pool_proj 256*64+64 = 16,448:
    # 388,736, giving 128+192+96+64 = 480 channels. classifier 480*10+10 = 4,810.
    # pool3: ceil((28-3)/2)+1 = 14
    "inception": (163_696 + 388_736 + 4_810, [10],
                  {"inception_3a.output": [256, 28, 28], "pool3.3x3_s2": [480, 14, 14]}),
    # conv1 16*3*3*3 = 432 (no bias); each Scale's gamma and beta 16+16 = 32 (the BatchNorm's
    # mean and variance are buffers); branch2a and branch2b 16*16*3*3 = 2,304 each;
    # fc10 16*10+10 = 170
    "resnet_block": (432 + 32 + 2_304 + 32 + 2_304 + 32 + 170, [10], {"res2a": [16, 16, 16]}),
}


@pytest.mark.parametrize("stem", sorted(CLASSIC))
def test_classic_net_imports_with_the_parameters_counted_by_hand(tmp_path, stem):
    params, output_shape, shapes = CLASSIC[stem]
    text, weights = import_caffe(DATA / f"{stem}.prototxt")
    assert weights == {}  # no caffemodel beside it
    graph = checked(tmp_path, text, stem)
    summary = summarize(graph)
    assert summary["total_params"] == params
    assert list(summary["output_shapes"].values()) == [output_shape]
    rows = {row["name"]: row["output_shape"] for row in summary["layers"]}
    for name, shape in shapes.items():
        assert rows[name] == shape, name


def test_spec_reads_as_the_caffe_net(tmp_path):
    text, _ = import_caffe(DATA / "lenet.prototxt")
    graph = checked(tmp_path, text)
    assert [graph.nodes[n]["layer"].type_name for n in ("pool1", "ip1.flatten", "ip1", "prob")] \
        == ["maxpool2d", "flatten", "dense", "softmax"]
    assert graph.nodes["pool1"]["layer"].ceil_mode  # Caffe rounds a pool's size up
    assert graph.nodes["pool1"]["layer"].stride == (2, 2)
    caffenet = checked(tmp_path, import_caffe(DATA / "caffenet.prototxt")[0], "caffenet")
    norm = caffenet.nodes["norm1"]["layer"]
    assert (norm.size, norm.alpha, norm.beta, norm.k) == (5, 1e-4, 0.75, 1.0)
    assert caffenet.nodes["conv2"]["layer"].groups == 2
    assert caffenet.nodes["drop6"]["layer"].rate == 0.5


def test_in_place_layers_read_the_latest_value(tmp_path):
    graph = checked(tmp_path, import_caffe(DATA / "resnet_block.prototxt")[0])
    # conv1 -> bn_conv1 (with scale_conv1) -> conv1_relu all write the blob 'conv1'
    assert list(graph.predecessors("bn_conv1")) == ["conv1"]
    assert sorted(graph.predecessors("res2a")) == ["bn2a_branch2b", "conv1_relu"]
    assert list(graph.predecessors("res2a_branch2a")) == ["conv1_relu"]
    assert not any(name.startswith("scale") for name in graph.nodes)


@pytest.mark.parametrize("form", [
    'input: "data"\ninput_dim: 1\ninput_dim: 3\ninput_dim: 8\ninput_dim: 8\n',
    'input: "data"\ninput_shape { dim: 1 dim: 3 dim: 8 dim: 8 }\n',
    'layer { name: "data" type: "Input" top: "data"\n'
    '        input_param { shape: { dim: 1, dim: 3, dim: 8, dim: 8 } } }\n',
])
def test_each_input_form(tmp_path, form):
    path = write_prototxt(tmp_path, form + 'layer { name: "c" type: "Convolution" bottom: "data" '
                                           'top: "c" convolution_param { num_output: 4 '
                                           'kernel_h: 3 kernel_w: 1 stride: [2, 1] } }\n')
    text, _ = import_caffe(path)
    assert "input: [3, 8, 8]" in text
    assert "{name: c, type: conv2d, filters: 4, kernel: [3, 1], stride: [2, 1]}" in text


# -- train-only layers -----------------------------------------------------------------------------

TRAIN_VAL = """
name: "small"
layer { name: "mnist" type: "Data" top: "data" top: "label" include { phase: TRAIN } }
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 1 dim: 1 dim: 4 dim: 4 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        inner_product_param { num_output: 3 } }
layer { name: "accuracy" type: "Accuracy" bottom: "ip" bottom: "label" top: "accuracy"
        include { phase: TEST } }
layer { name: "prob" type: "Softmax" bottom: "ip" top: "prob" include { phase: TEST } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""


def test_train_only_layers_are_skipped_with_a_note(tmp_path, capsys):
    text, _ = import_caffe(write_prototxt(tmp_path, TRAIN_VAL))
    err = capsys.readouterr().err
    assert "net.prototxt:3:23: note: layer 'mnist' (Data): skipped: it is included in the " \
           "TRAIN phase only" in err
    assert "layer 'accuracy' (Accuracy): skipped: it only trains" in err
    assert "layer 'loss' (SoftmaxWithLoss): skipped: it only trains; the spec's train: loss " \
           "is softmax_cross_entropy" in err
    assert "layer 'prob' (Softmax): dropped: softmax_cross_entropy takes the logits" in err
    assert "# net.prototxt:3:23: note: layer 'mnist' (Data)" in text  # and in the spec
    graph = checked(tmp_path, text)
    assert graph.graph["outputs"] == ["ip"]
    assert text.endswith("train:\n  loss: softmax_cross_entropy\n")


def test_a_net_fed_by_data_layers_asks_for_the_deploy_net(tmp_path):
    text = TRAIN_VAL.replace("include { phase: TRAIN }", "").replace(
        'layer { name: "data" type: "Input" top: "data"\n'
        '        input_param { shape { dim: 1 dim: 1 dim: 4 dim: 4 } } }\n', "")
    assert "Input" not in text
    with pytest.raises(cnncompiler.CnncError, match=r"the net has 0 inputs \(none\); cnnc "
                                                    r"imports nets of one; its data comes from "
                                                    r"the skipped layer 'mnist' \(Data\)"):
        import_caffe(write_prototxt(tmp_path, text))


# -- refusals --------------------------------------------------------------------------------------

HEAD = 'input: "data"\ninput_shape { dim: 1 dim: 4 dim: 6 dim: 6 }\n'


def refusal(tmp_path, layers: str) -> str:
    with pytest.raises(cnncompiler.CnncError) as caught:
        import_caffe(write_prototxt(tmp_path, HEAD + layers))
    return str(caught.value)


def test_an_unknown_layer_type_is_refused_with_its_line(tmp_path):
    message = refusal(tmp_path, 'layer { name: "r" type: "ReLU" bottom: "data" top: "r" }\n'
                                'layer {\n  name: "up"\n  type: "Deconvolution"\n'
                                '  bottom: "r"\n  top: "up"\n}\n')
    first, line, caret = message.splitlines()
    assert first.startswith(f"{tmp_path / 'net.prototxt'}:6:3: layer 'up' (Deconvolution): cnnc "
                            "has no layer for this Caffe type; it reads BatchNorm, Concat, "
                            "Convolution, Dropout, Eltwise, Flatten,")
    assert line == '    |   type: "Deconvolution"'
    assert caret == "    |   ^"


@pytest.mark.parametrize("layer, expected", [
    ('type: "LRN" lrn_param { norm_region: WITHIN_CHANNEL }',
     r"layer 'x' \(LRN\): norm_region: WITHIN_CHANNEL; cnnc's lrn normalises across channels"),
    ('type: "LRN" lrn_param { local_size: 4 }', r"local_size 4 is even"),
    ('type: "Eltwise" bottom: "data" eltwise_param { operation: PROD }',
     r"layer 'x' \(Eltwise\): operation: PROD; cnnc's add is an Eltwise SUM with every coeff 1"),
    ('type: "Eltwise" bottom: "data" eltwise_param { coeff: 1 coeff: -1 }',
     r"coeff \[1.0, -1.0\]; cnnc's add is an Eltwise SUM"),
    ('type: "Pooling" pooling_param { pool: STOCHASTIC kernel_size: 2 }',
     r"pool: STOCHASTIC; cnnc reads MAX and AVE pooling"),
    ('type: "Pooling" pooling_param { pool: MAX kernel_size: 1 stride: 2 }',
     r"Caffe's rounded-up pooling keeps a window past the input"),
    ('type: "Scale" scale_param { bias_term: true }',
     r"a Scale that does not follow a BatchNorm"),
    ('type: "InnerProduct" inner_product_param { num_output: 2 transpose: true }',
     r"transpose: true stores the weight as \(in, out\)"),
    ('type: "Concat" bottom: "data" concat_param { axis: 0 }', r"along the batch axis"),
    ('type: "Flatten" flatten_param { end_axis: 2 }', r"end_axis 2"),
    ('type: "Convolution" convolution_param { kernel_size: 3 }', r"no num_output"),
    ('type: "Convolution" convolution_param { num_output: 2 kernel_size: three }',
     r"kernel_size: 'three' is not an integer"),
    ('type: "Convolution" convolution_param { num_output: 2 kernel_size: [3, 3, 3] }',
     r"3 values of kernel_size: a 3-D window; cnnc reads 2-D ones"),
])
def test_what_cnnc_cannot_express_is_refused(tmp_path, layer, expected):
    message = refusal(tmp_path, f'layer {{ name: "x" bottom: "data" top: "x" {layer} }}\n')
    assert "net.prototxt:3:" in message.splitlines()[0]
    assert re.search(expected, message), message


def test_a_layer_reading_a_blob_nobody_makes_is_refused(tmp_path):
    message = refusal(tmp_path, 'layer { name: "r" type: "ReLU" bottom: "dta" top: "r" }\n')
    assert "layer 'r' (ReLU): it reads the blob 'dta', which no layer before it makes" in message


def test_a_net_without_layers_is_refused(tmp_path):
    with pytest.raises(cnncompiler.CnncError, match="its input blob is itself an output"):
        import_caffe(write_prototxt(tmp_path, HEAD))


def test_prototxt_syntax_errors_name_the_place(tmp_path):
    with pytest.raises(cnncompiler.CnncError, match=r"net.prototxt:3:7: '\{' is never closed: "
                                                    r"expected '\}' before the end of the file"):
        import_caffe(write_prototxt(tmp_path, HEAD + 'layer { name: "x" type: "ReLU"\n'))
    with pytest.raises(cnncompiler.CnncError, match=r"net.prototxt:3:14: expected ':' or '\{', "
                                                    r"found '\"x\"'\n    \| layer \{ name \"x\" \}"
                                                    r"\n    \|              \^"):
        import_caffe(write_prototxt(tmp_path, HEAD + 'layer { name "x" }\n'))
    with pytest.raises(cnncompiler.CnncError, match=r"net.prototxt:3:9: expected a field name or "
                                                    r"'\}', found '7'"):
        import_caffe(write_prototxt(tmp_path, HEAD + 'layer { 7 }\n'))


# -- a caffemodel, written here --------------------------------------------------------------------

def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def blob(array: np.ndarray, legacy: bool = False) -> bytes:
    """A BlobProto: its shape (BlobShape, or the old num/channels/height/width as varints) and
    its data as packed floats."""
    array = np.asarray(array, np.float32)
    if legacy:
        dims = (1,) * (4 - array.ndim) + array.shape
        shape = b"".join(varint(k << 3) + varint(d) for k, d in zip((1, 2, 3, 4), dims))
    else:
        shape = field(7, field(1, b"".join(varint(d) for d in array.shape)))
    return shape + field(5, array.astype("<f4").tobytes())


def caffemodel(weights: dict[str, list[np.ndarray]], v1: tuple[str, ...] = ()) -> bytes:
    """A NetParameter of each layer's name and blobs: ``layer`` (100), or the V1 ``layers``
    (2, name 4, blobs 6) for those named in ``v1``, whose blobs take the legacy 4-D shape."""
    out = field(1, b"generated")
    for name, arrays in weights.items():
        if name in v1:
            out += field(2, field(4, name.encode()) + b"".join(field(6, blob(a, True))
                                                                for a in arrays))
        else:
            out += field(100, field(1, name.encode()) + field(2, b"any")
                         + b"".join(field(7, blob(a)) for a in arrays))
    return out


ROUND_TRIP = """
name: "mixed"
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 2 dim: 3 dim: 13 dim: 13 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 8 kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" batch_norm_param { eps: 0.001 } }
layer { name: "scale1" type: "Scale" bottom: "conv1" top: "conv1" scale_param { bias_term: true } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" relu_param { negative_slope: 0.1 } }
layer { name: "norm1" type: "LRN" bottom: "conv1" top: "norm1"
        lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 k: 2 } }
layer { name: "pool1" type: "Pooling" bottom: "norm1" top: "pool1"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
        convolution_param { num_output: 8 kernel_size: 3 pad: 1 group: 2 } }
layer { name: "sum" type: "Eltwise" bottom: "pool1" bottom: "conv2" top: "sum" }
layer { name: "pool2" type: "Pooling" bottom: "sum" top: "pool2"
        pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "conv3" type: "Convolution" bottom: "pool2" top: "conv3"
        convolution_param { num_output: 4 kernel_size: 1 } }
layer { name: "tanh3" type: "TanH" bottom: "conv3" top: "conv3" }
layer { name: "join" type: "Concat" bottom: "pool2" bottom: "conv3" top: "join" }
layer { name: "fc" type: "InnerProduct" bottom: "join" top: "fc"
        inner_product_param { num_output: 5 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""


def caffe_weights(rng) -> dict[str, list[np.ndarray]]:
    def normal(*shape, scale=0.3):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    factor = np.float32(4.0)  # Caffe keeps the statistics times this factor
    return {
        "conv1": [normal(8, 3, 3, 3), normal(8)],
        "bn1": [normal(8) * factor, (rng.uniform(0.5, 2, 8) * factor).astype(np.float32),
                np.array([factor], np.float32)],
        "scale1": [rng.uniform(0.5, 1.5, 8).astype(np.float32), normal(8)],
        "conv2": [normal(8, 4, 3, 3), normal(8)],
        "conv3": [normal(4, 8, 1, 1), normal(4)],
        "fc": [normal(5, 12 * 3 * 3, scale=0.1), normal(5)],
    }


# numpy, by Caffe's definitions (its layers' Forward_cpu)

def conv(x, w, b, stride=1, pad=0, group=1):
    n, c, h, wd = x.shape
    out, _, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    oh, ow = (h + 2 * pad - kh) // stride + 1, (wd + 2 * pad - kw) // stride + 1
    y = np.zeros((n, out, oh, ow))
    cin, cout = c // group, out // group
    for g in range(group):
        for i in range(oh):
            for j in range(ow):
                patch = xp[:, g * cin:(g + 1) * cin, i * stride:i * stride + kh,
                           j * stride:j * stride + kw]
                y[:, g * cout:(g + 1) * cout, i, j] = np.einsum(
                    "nchw,ochw->no", patch, w[g * cout:(g + 1) * cout])
    return y + b[None, :, None, None]


def pool(x, kind, k, stride, pad=0):
    """Caffe's pooling: output size rounded up; an average divides by the window clipped to the
    padded input (padding counted, the overhang past it not)."""
    n, c, h, w = x.shape

    def size(length):
        s = -(-(length + 2 * pad - k) // stride) + 1
        return s - 1 if pad and (s - 1) * stride >= length + pad else s

    y = np.zeros((n, c, size(h), size(w)))
    for i in range(size(h)):
        for j in range(size(w)):
            h0, w0 = i * stride - pad, j * stride - pad
            h1, w1 = min(h0 + k, h + pad), min(w0 + k, w + pad)
            count = (h1 - h0) * (w1 - w0)
            window = x[:, :, max(h0, 0):min(h1, h), max(w0, 0):min(w1, w)]
            y[:, :, i, j] = window.max(axis=(2, 3)) if kind == "max" else \
                window.sum(axis=(2, 3)) / count
    return y


def lrn(x, size, alpha, beta, k):
    half = (size - 1) // 2
    sq = np.pad(x * x, ((0, 0), (half, half), (0, 0), (0, 0)))
    total = sum(sq[:, i:i + x.shape[1]] for i in range(size))
    return x * (k + alpha / size * total) ** -beta


def caffe_forward(x, wts):
    x = x.astype(np.float64)
    y = conv(x, *wts["conv1"], stride=2, pad=1)
    mean, var, factor = wts["bn1"]
    y = (y - (mean / factor)[:, None, None]) / np.sqrt((var / factor)[:, None, None] + 1e-3)
    gamma, beta = wts["scale1"]
    y = y * gamma[:, None, None] + beta[:, None, None]
    y = np.where(y > 0, y, 0.1 * y)
    y = pool(lrn(y, 3, 0.5, 0.75, 2.0), "max", 2, 2)
    y = y + conv(y, *wts["conv2"], pad=1, group=2)
    y = pool(y, "ave", 3, 2, pad=1)
    y = np.concatenate([y, np.tanh(conv(y, *wts["conv3"]))], axis=1)
    w, b = wts["fc"]
    z = y.reshape(len(y), -1) @ w.T + b
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def test_caffemodel_weights_compute_what_caffe_computes(tmp_path):
    rng = np.random.default_rng(7)
    wts = caffe_weights(rng)
    path = write_prototxt(tmp_path, ROUND_TRIP, "mixed")
    (tmp_path / "mixed.caffemodel").write_bytes(caffemodel(wts, v1=("conv2",)))
    blobs = read_caffemodel(tmp_path / "mixed.caffemodel")
    assert blobs["conv2"][0].shape == (8, 4, 3, 3) and blobs["conv2"][1].shape == (1, 1, 1, 8)
    np.testing.assert_array_equal(blobs["fc"][0], wts["fc"][0])

    text, params = import_caffe(path)  # mixed.caffemodel, beside it
    assert params["bn1.weight"] is not None
    np.testing.assert_allclose(params["bn1.running_var"], wts["bn1"][1] / 4, rtol=1e-6)
    assert "scale1.weight" not in params
    spec = tmp_path / "mixed.yaml"
    spec.write_text(text)
    from cnncompiler.runtime.weights import write_weights

    write_weights(tmp_path / "mixed.safetensors", params)
    model = cnncompiler.compile(spec, weights=tmp_path / "mixed.safetensors")
    x = rng.standard_normal((2, 3, 13, 13)).astype(np.float32)
    want = caffe_forward(x, wts)
    np.testing.assert_allclose(model.predict(x), want, rtol=1e-5, atol=1e-6)


def test_cli_import_with_a_caffemodel(tmp_path, capsys):
    rng = np.random.default_rng(3)
    wts = caffe_weights(rng)
    path = write_prototxt(tmp_path, ROUND_TRIP, "deploy")
    (tmp_path / "weights.caffemodel").write_bytes(caffemodel(wts))
    out = tmp_path / "out" / "mixed.yaml"
    code = main(["import", str(path), "--caffemodel", str(tmp_path / "weights.caffemodel"),
                 "-o", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    assert "(12 tensors," in printed  # bn1 holds scale1's weight and bias
    weights = read_weights(out.with_suffix(".safetensors"))
    np.testing.assert_array_equal(weights["conv2.weight"], wts["conv2"][0])
    np.testing.assert_array_equal(weights["fc.weight"], wts["fc"][0])
    cnncompiler.check(out)
    text, _ = read_model(path, caffemodel=tmp_path / "weights.caffemodel")
    assert text == out.read_text()
    assert main(["import", str(tmp_path / "net.onnx"), "--caffemodel", str(path.parent / "w"),
                 "-o", str(tmp_path / "o.yaml")]) != 0
    assert "--caffemodel gives a Caffe net's weights" in capsys.readouterr().err


def test_a_caffemodel_without_a_layer_s_blobs_is_refused(tmp_path):
    wts = caffe_weights(np.random.default_rng(0))
    del wts["conv3"]
    path = write_prototxt(tmp_path, ROUND_TRIP, "mixed")
    (tmp_path / "mixed.caffemodel").write_bytes(caffemodel(wts))
    with pytest.raises(cnncompiler.CnncError, match=r"layer 'conv3' \(Convolution\): the "
                                                    r"caffemodel holds 0 blobs for this layer"):
        import_caffe(path)
    (tmp_path / "mixed.caffemodel").write_bytes(b"\x0a\xff")
    with pytest.raises(cnncompiler.CnncError, match="not a readable caffemodel"):
        import_caffe(path)

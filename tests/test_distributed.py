"""Data-parallel training on torch.distributed (gloo, this machine's CPUs): N processes with
per-process batch B train to the same parameters as one process with batch N x B; batch norm
with synchronised statistics too; two "nodes" on localhost; a killed worker stops the run with
its checkpoint intact, and the run resumes with another number of processes.

The equality targets hold within 1e-5 relative at the learning rates used here; at a learning
rate where training is unstable (the bn spec at lr 0.1 barely moves its loss) the float
rounding of a different summation order grows to 1e-3 in an epoch, as it would between any two
BLAS libraries.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

from cnncompiler.backends.train_lower import (ALL_REDUCE, buckets, flatten_into_bucket,
                                              split_bucket)
from cnncompiler.train.checkpoint import META
from cnncompiler.train.distributed import Replicas
from cnncompiler.train.trainer import GivenBatches

dist = pytest.importorskip("torch.distributed")
pytestmark = [pytest.mark.tvm, pytest.mark.torch,
              pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                 reason="torch.distributed with gloo is needed")]

ROOT = Path(__file__).resolve().parents[1]
LENET = ROOT / "specs" / "lenet5.yaml"
BN_SPEC = """\
name: bn_digits
input: [1, 16, 16]
layers:
  - {name: conv1, type: conv2d, filters: 8, kernel: 3, padding: 1, bias: false}
  - {name: bn1, type: batchnorm}
  - {name: relu1, type: relu}
  - {name: pool1, type: maxpool2d, kernel: 2}
  - {name: conv2, type: conv2d, filters: 16, kernel: 3, padding: 1, bias: false}
  - {name: bn2, type: batchnorm}
  - {name: relu2, type: relu}
  - {name: gap, type: global_avgpool}
  - {name: flat, type: flatten}
  - {name: fc, type: dense, units: 10}
train:
  optimizer: {type: sgd, lr: 0.02, momentum: 0.9}
  sync_batchnorm: SYNC
"""
COMMON = ["--data", "digits", "--epochs", "1", "--keep", "last", "--quiet"]
PROCESS_TIMEOUT = 600  # generous: compiling on a busy machine; never a measured result


def cnnc(*args, env=None, check=True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "cnncompiler", *map(str, args)],
                            capture_output=True, text=True, timeout=PROCESS_TIMEOUT,
                            env=env or os.environ.copy())
    if check and result.returncode:
        raise AssertionError(f"cnnc {' '.join(map(str, args))} failed:\n{result.stderr[-4000:]}")
    return result


def weights(run: Path) -> dict:
    from safetensors.numpy import load_file

    return load_file(str(run / "weights.safetensors"))


def largest_difference(a: dict, b: dict) -> float:
    """The largest difference of any parameter, relative to the parameter's largest value."""
    assert a.keys() == b.keys()
    return max(float(np.abs(a[k] - b[k]).max() / max(np.abs(a[k]).max(), 1e-12)) for k in a)


@pytest.fixture(scope="module")
def bn_specs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("specs")
    paths = {}
    for sync in (True, False):
        paths[sync] = folder / f"bn_sync_{str(sync).lower()}.yaml"
        paths[sync].write_text(BN_SPEC.replace("SYNC", str(sync).lower()))
    return paths


@pytest.fixture(scope="module")
def lenet_alone(tmp_path_factory) -> dict:
    """LeNet-5, one epoch, one process with batch 64."""
    run = tmp_path_factory.mktemp("lenet") / "alone"
    cnnc("train", LENET, "-o", run, "--batch-size", 64, *COMMON)
    return weights(run)


# -- end to end -------------------------------------------------------------------------------

@pytest.mark.slow
def test_two_processes_train_as_one_with_the_global_batch(tmp_path, lenet_alone):
    run = tmp_path / "two"
    # --keep best (the default): rank 0 loads the best checkpoint after the others are done
    result = cnnc("train", LENET, "-o", run, "--batch-size", 32, "--nproc", 2,
                  *[a for a in COMMON if a not in ("--keep", "last")])
    assert "kept epoch 1 (the best val_accuracy, --keep best)" in result.stdout
    assert "2 processes (gloo) x 32 samples = global batch 64" in result.stderr
    assert largest_difference(lenet_alone, weights(run)) < 1e-5
    # rank 0 alone wrote the run: one artifact, one set of checkpoints
    assert (run / "checkpoints" / "last" / META).is_file()


@pytest.mark.slow
def test_synchronised_batch_norm_trains_as_one_process(tmp_path, bn_specs):
    alone, two, unsynced = tmp_path / "alone", tmp_path / "two", tmp_path / "unsynced"
    cnnc("train", bn_specs[True], "-o", alone, "--batch-size", 64, *COMMON)
    result = cnnc("train", bn_specs[True], "-o", two, "--batch-size", 32, "--nproc", 2, *COMMON)
    assert "batch norm synchronised" in result.stderr
    assert largest_difference(weights(alone), weights(two)) < 1e-5
    # each process's own statistics (the default) normalise by 32 samples, not 64: different
    cnnc("train", bn_specs[False], "-o", unsynced, "--batch-size", 32, "--nproc", 2, *COMMON)
    assert largest_difference(weights(alone), weights(unsynced)) > 1e-4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_nodes_on_localhost_train_as_one_process(tmp_path, lenet_alone):
    """torchrun --nnodes 2: two node agents meeting at one rendezvous endpoint, as on two
    machines (one process each)."""
    port = free_port()
    run = tmp_path / "nodes"
    env = os.environ.copy()
    env["TVM_NUM_THREADS"] = "1"
    nodes = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank",
         str(rank), "--nproc_per_node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint",
         f"127.0.0.1:{port}", "--rdzv-id", "cnnc-test", "-m", "cnncompiler", "train",
         str(LENET), "-o", str(run), "--batch-size", "32", *COMMON],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        for rank in (0, 1)]
    outputs = [node.communicate(timeout=PROCESS_TIMEOUT)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], "\n".join(o[-3000:] for o in outputs)
    assert largest_difference(lenet_alone, weights(run)) < 1e-5


@pytest.mark.slow
def test_a_killed_worker_stops_the_run_and_its_checkpoint_resumes(tmp_path):
    """Kill rank 1 after the first checkpoint: the launcher exits with an error naming the
    rank, the checkpoint verifies, and the run resumes on one process."""
    run = tmp_path / "run"
    launcher = subprocess.Popen(
        [sys.executable, "-m", "cnncompiler", "train", str(LENET), "--data", "digits", "-o",
         str(run), "--epochs", "200", "--batch-size", "32", "--nproc", "2", "--quiet",
         "--keep", "last"], stderr=subprocess.PIPE, text=True)
    pid = None
    for line in launcher.stderr:
        if line.startswith("rank 1 of 2 (pid "):
            pid = int(line.split("(pid ")[1].split(",")[0])
            break
    assert pid is not None, "rank 1 did not start"
    meta = run / "checkpoints" / "last" / META
    deadline = time.monotonic() + PROCESS_TIMEOUT
    while not meta.is_file() and launcher.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert meta.is_file(), "no checkpoint was written"
    os.kill(pid, signal.SIGKILL)
    rest = launcher.stderr.read()
    launcher.wait(timeout=PROCESS_TIMEOUT)
    assert launcher.returncode != 0
    assert "rank      : 1" in rest and "a training process failed" in rest, rest[-3000:]
    assert f"--resume {run}" in rest

    from cnncompiler.train.checkpoint import read_checkpoint, read_meta

    read_checkpoint(run / "checkpoints" / "last")  # verifies every file against its digest
    epoch = read_meta(run / "checkpoints" / "last")["epoch"]
    result = cnnc("train", LENET, "--data", "digits", "-o", run, "--resume", run,
                  "--epochs", epoch + 1, "--quiet")
    assert f"resumed from {run / 'checkpoints' / 'last'} at epoch {epoch}" in result.stderr
    assert (run / "weights.safetensors").is_file()


FIT_SCRIPT = """\
import sys
import numpy as np
import cnncompiler as cc

rng = np.random.default_rng(0)
x = rng.standard_normal((49, 1, 16, 16)).astype(np.float32)
y = rng.integers(0, 10, 49)
model = cc.compile(sys.argv[1], target="cpu", seed=0)
model.fit(x, y, epochs=1, batch_size=int(sys.argv[2]), verbose=0)
from cnncompiler.train import distributed
if distributed.current() is None or distributed.current().leader:
    np.savez(sys.argv[3], **model.trainer.pull_params())
"""


@pytest.mark.slow
def test_fit_in_a_script_torchrun_started_joins_the_run(tmp_path, bn_specs):
    """fit() in each process of ``torchrun --nproc_per_node 2 script.py`` trains as one
    process with the global batch; the last global batch has one sample, so the second
    process steps on a stand-in that must add nothing (to the gradients, or to the
    synchronised batch statistics)."""
    script = tmp_path / "train.py"
    script.write_text(FIT_SCRIPT)
    spec = bn_specs[True]
    env = dict(os.environ, TVM_NUM_THREADS="1")
    subprocess.run([sys.executable, str(script), str(spec), "16", str(tmp_path / "one.npz")],
                   check=True, timeout=PROCESS_TIMEOUT, env=env)
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                             "--nproc_per_node=2", str(script), str(spec), "8",
                             str(tmp_path / "two.npz")], capture_output=True, text=True,
                            timeout=PROCESS_TIMEOUT, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    one, two = np.load(tmp_path / "one.npz"), np.load(tmp_path / "two.npz")
    assert largest_difference(dict(one), dict(two)) < 1e-5


# -- the parts ----------------------------------------------------------------------------------

def test_a_spec_error_is_reported_once_before_any_process_starts(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(LENET.read_text().replace("conv2d", "conv2dd", 1))
    result = cnnc("train", bad, "-o", tmp_path / "run", "--nproc", 2, *COMMON, check=False)
    assert result.returncode != 0
    assert "starting 2 training processes" not in result.stderr
    assert result.stderr.count("unknown layer type 'conv2dd'") == 1


def test_a_lost_peer_is_reported_with_the_rank_and_the_cause():
    from cnncompiler.train.distributed import lost_contact

    gloo = RuntimeError("[/src/gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:9961: "
                        "Connection reset by peer. This is typically caused by a remote worker")
    message = lost_contact(0, 2, gloo)
    assert message.startswith("rank 0 of 2: another training process stopped")
    assert "(Read error [127.0.0.1]:9961: Connection reset by peer)" in message
    assert "--resume" in message


def test_nproc_must_be_positive(tmp_path):
    result = cnnc("train", LENET, "-o", tmp_path / "run", "--nproc", 0, *COMMON, check=False)
    assert result.returncode != 0 and "--nproc must be a positive number" in result.stderr


def test_each_rank_takes_its_part_of_a_global_batch():
    batch = np.arange(10, 17)
    parts = [Replicas(r, 3, 3, "gloo").part(batch) for r in range(3)]
    assert np.concatenate([p for p, _ in parts]).tolist() == batch.tolist()
    assert all(present for _, present in parts)
    # a last global batch shorter than the world: a stand-in sample, marked absent
    short = [Replicas(r, 3, 3, "gloo").part(np.array([5])) for r in range(3)]
    assert [(p.tolist(), present) for p, present in short] == \
        [([5], True), ([5], False), ([5], False)]


def test_given_batches_are_dealt_round_robin_with_stand_ins():
    items = [(np.full((1, 1), i, np.float32), np.array([i])) for i in range(5)]
    dealt = [list(GivenBatches(items, Replicas(r, 2, 2, "gloo")).batches(0)) for r in range(2)]
    assert [int(y[0]) for _, y, _ in dealt[0]] == [0, 2, 4]
    assert [(int(y[0]), present) for _, y, present in dealt[1]] == \
        [(1, True), (3, True), (4, False)]
    assert GivenBatches(items, Replicas(0, 2, 2, "gloo")).steps == 3


def test_gradient_buckets_round_trip_and_add_nothing_when_absent():
    """The flat bucket the step all-reduces holds every gradient's elements in order, and
    reads back into the same shapes; an absent process's bucket is zeros."""
    import tvm
    from tvm import te

    shapes = [(3, 2), (4,), (2, 1, 3)]
    tensors = [te.placeholder(s, name=f"g{i}") for i, s in enumerate(shapes)]
    replica = te.placeholder((2,), name="replica")
    flat = flatten_into_bucket(tensors, replica)
    parts = split_bucket(flat, [list(s) for s in shapes])
    func = tvm.compile(te.create_prim_func([*tensors, replica, flat, *parts]), target="llvm")
    rng = np.random.default_rng(0)
    values = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    for present in (1.0, 0.0):
        args = [tvm.runtime.tensor(v) for v in values]
        args.append(tvm.runtime.tensor(np.array([0.5, present], np.float32)))
        outs = [tvm.runtime.tensor(np.zeros(16, np.float32))]
        outs += [tvm.runtime.tensor(np.zeros(s, np.float32)) for s in shapes]
        func(*args, *outs)
        expected = np.concatenate([v.ravel() for v in values]) * present
        np.testing.assert_array_equal(outs[0].numpy(), expected)
        for value, out in zip(values, outs[1:]):
            np.testing.assert_array_equal(out.numpy(), value * present)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_parallel_step_of_one_process_is_the_plain_step(dtype, bn_specs, monkeypatch):
    """With the all-reduce of one process (the identity), share 1 and present 1, the
    data-parallel step with synchronised batch norm computes what the plain step does: the
    CPU's scheduled lowering (float32) and the plain lowering CUDA builds use (float64 here)."""
    import tvm
    from tvm.runtime import vm as tvm_vm

    from cnncompiler.backends.targets import parse_target
    from cnncompiler.backends.train_build import compile_train_module
    from cnncompiler.backends.train_lower import Parallel
    from cnncompiler.graph import load_checked
    from cnncompiler.passes import optimize
    from cnncompiler.spec.losses import loss_terms
    from cnncompiler.train import distributed, optim

    calls = []

    def one_process_sum(bucket):
        calls.append(bucket.shape)
        return tvm.runtime.tensor(bucket.numpy(), bucket.device)

    tvm.register_global_func(ALL_REDUCE, one_process_sum, override=True)
    monkeypatch.setattr(distributed, "_registered", False)  # the real one is registered anew
    g, _ = load_checked(bn_specs[True])
    g, _ = optimize(g, passes=["eliminate-dead"])
    train = g.graph["train"]
    terms = [t.to_json() for t in loss_terms(train.loss, g.graph["outputs"], train.loss_weights)]
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 1, 16, 16)).astype(dtype)
    y = rng.integers(0, 10, 6).astype(np.int32)
    hyper = optim.hyper_vector(optim.optimizer_from({"type": "sgd", "lr": 0.1,
                                                     "momentum": 0.9}), 0.1, 0).astype(dtype)
    results = []
    for parallel in (None, Parallel(sync_batchnorm=True)):
        executable, sig = compile_train_module(g, terms, "sgd", parse_target("cpu"), dtype,
                                               parallel=parallel)
        vm = tvm_vm.VirtualMachine(executable, tvm.cpu())
        values = {k: rng_like(k, sig.shapes[k], dtype) for k in sig.params + sig.buffers +
                  sig.state}
        replica = [np.array([1.0, 1.0], dtype)] if parallel else []
        args = [tvm.runtime.tensor(a) for a in [x, y, hyper, *replica,
                                                *(values[k] for k in values)]]
        results.append([o.numpy() for o in vm["train_step"](*args)])
    assert calls, "the parallel step made no all-reduce call"
    for plain, parallel in zip(*results):
        np.testing.assert_allclose(parallel, plain, rtol=1e-5 if dtype == "float32" else 1e-12,
                                   atol=1e-6 if dtype == "float32" else 1e-12)


def rng_like(name: str, shape, dtype) -> np.ndarray:
    """Parameters away from their defaults, the same for every build (seeded by the name)."""
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    if name.endswith("running_var"):
        return rng.uniform(0.5, 2.0, shape).astype(dtype)
    return (rng.standard_normal(shape) * 0.3).astype(dtype)


def test_buckets_respect_their_limits(monkeypatch):
    from cnncompiler.backends import train_lower

    class Fake:
        def __init__(self, n):
            self.ty = type("T", (), {"shape": type("S", (), {"values": [n]})()})()

    monkeypatch.setattr(train_lower, "BUCKET_ELEMENTS", 100)
    sizes = [60, 30, 20, 100, 5] + [1] * 10
    groups = buckets([Fake(n) for n in sizes])
    assert [[int(t.ty.shape.values[0]) for t in g] for g in groups] == \
        [[60, 30], [20], [100], [5, 1, 1, 1, 1, 1, 1, 1], [1, 1, 1]]

"""A compiled artifact is checked before anything in it is trusted.

A flipped byte, a truncated or missing file, a corrupt manifest, corrupt weights, a wrong
target: each is refused with an ArtifactError that says what is wrong and what to do, and the
library is NEVER loaded (``tvm.runtime.load_module`` fails the test if it is called).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import cnncompiler as cc
from cnncompiler.errors import ArtifactError, CnncError
from cnncompiler.runtime import artifact as art

from compile_helpers import spec_path

pytestmark = pytest.mark.tvm


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("artifact") / "lenet5"
    cc.compile(spec_path("lenet5"), output_dir=out)
    return out


@pytest.fixture
def artifact(built, tmp_path):
    """A fresh copy of the compiled artifact, to tamper with."""
    copy = tmp_path / "lenet5"
    shutil.copytree(built, copy)
    return copy


@pytest.fixture
def never_loaded(monkeypatch):
    import tvm

    def refuse(*args, **kwargs):
        pytest.fail(f"the library was loaded: tvm.runtime.load_module{args}")

    monkeypatch.setattr(tvm.runtime, "load_module", refuse)


X = np.zeros((1, 1, 32, 32), np.float32)


def refused(directory, match, device=None):
    """Loading (and, were it to load, running) the artifact raises ArtifactError."""
    with pytest.raises(ArtifactError, match=match) as info:
        cc.load(directory, device=device).predict(X)
    return str(info.value)


def rewrite_manifest(directory, edit, redigest=True):
    """Edit the manifest; with ``redigest``, as a forger who also recomputes its digest, so
    the checks behind the digest are exercised."""
    manifest = json.loads((directory / art.MANIFEST).read_text())
    edit(manifest)
    if redigest:
        manifest["digest"] = art.manifest_digest(manifest)
    (directory / art.MANIFEST).write_text(json.dumps(manifest))


def rehash(directory):
    """What a careful forger does: record the tampered files' hashes in the manifest."""
    manifest = json.loads((directory / art.MANIFEST).read_text())
    art.write_manifest(directory, manifest)


def test_intact_artifact_loads_and_runs(artifact):
    model = cc.load(artifact, device="cpu")
    assert model.predict(X).shape == (1, 10)


def test_flipped_byte_in_library(artifact, never_loaded):
    lib = artifact / art.LIBRARY
    data = bytearray(lib.read_bytes())
    data[len(data) // 2] ^= 0x01
    lib.write_bytes(bytes(data))
    message = refused(artifact, "model.so")
    assert "sha256" in message and "recompile" in message


def test_truncated_library(artifact, never_loaded):
    lib = artifact / art.LIBRARY
    lib.write_bytes(lib.read_bytes()[:1000])
    message = refused(artifact, "model.so")
    assert "truncated" in message and "1000 bytes" in message


def test_library_replaced_by_another_of_the_same_size(artifact, never_loaded):
    lib = artifact / art.LIBRARY
    lib.write_bytes(b"\0" * lib.stat().st_size)
    refused(artifact, "does not match its sha256")


@pytest.mark.parametrize("name", [art.LIBRARY, art.WEIGHTS, art.SPEC, art.REPORT])
def test_missing_file(artifact, never_loaded, name):
    (artifact / name).unlink()
    message = refused(artifact, f"'{name}' is missing")
    assert "incomplete" in message


def test_missing_manifest(artifact, never_loaded):
    (artifact / art.MANIFEST).unlink()
    refused(artifact, "not a cnnc artifact: manifest.json is missing")


def test_missing_directory(tmp_path, never_loaded):
    refused(tmp_path / "nowhere", "does not exist")
    (tmp_path / "file").write_text("x")
    refused(tmp_path / "file", "is a file, not an artifact directory")


@pytest.mark.parametrize("text,match", [
    ("{not json", "manifest is corrupt"),
    ("", "manifest is corrupt"),
    ("[1, 2]", "not a cnnc artifact manifest"),
    ('{"format": "something-else"}', "not a cnnc artifact manifest"),
    (b"\xff\xfe{}", "manifest is corrupt"),
])
def test_corrupt_manifest(artifact, never_loaded, text, match):
    path = artifact / art.MANIFEST
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    refused(artifact, match)


def test_edited_manifest_is_refused_by_its_digest(artifact, never_loaded):
    rewrite_manifest(artifact, lambda m: m.update(batch_sizes=[1, 7]), redigest=False)
    refused(artifact, "does not match its digest")


def test_manifest_of_another_format_version(artifact, never_loaded):
    rewrite_manifest(artifact, lambda m: m.update(format_version=99))
    refused(artifact, "format version 99 is not supported")


@pytest.mark.parametrize("edit,match", [
    (lambda m: m.pop("files"), "lists no library or weights"),
    (lambda m: m["files"].pop(art.LIBRARY), "lists no library or weights"),
    (lambda m: m["files"].update({"../escape": {"sha256": "0", "size": 0}}), "outside"),
    (lambda m: m["files"].update({art.LIBRARY: "not a mapping"}), "model.so"),
    (lambda m: m.update(files=["model.so"]), "lists no library or weights"),
    (lambda m: m.update(target="cpu"), "target"),
    (lambda m: m.pop("target"), "target"),
    (lambda m: m.pop("optimization"), "recompile"),
    (lambda m: m["kernel_args"].pop(), "weight arguments do not match"),
])
def test_manifest_with_wrong_contents(artifact, never_loaded, edit, match):
    rewrite_manifest(artifact, edit)
    refused(artifact, match)


def test_flipped_byte_in_weights(artifact, never_loaded):
    weights = artifact / art.WEIGHTS
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0x10
    weights.write_bytes(bytes(data))
    refused(artifact, "weights.safetensors' does not match its sha256")


def test_corrupt_weights_even_with_matching_hash(artifact, never_loaded):
    (artifact / art.WEIGHTS).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}")
    rehash(artifact)
    refused(artifact, "corrupt or not a safetensors file")


def test_weights_of_another_model_even_with_matching_hash(artifact, never_loaded):
    from cnncompiler.runtime.weights import read_weights, write_weights

    params = read_weights(artifact / art.WEIGHTS)
    params["c1.weight"] = np.zeros((3, 1, 5, 5), np.float32)
    write_weights(artifact / art.WEIGHTS, params)
    rehash(artifact)
    message = refused(artifact, "c1.weight")
    assert "(3, 1, 5, 5)" in message


def test_edited_spec_even_with_matching_hash(artifact, never_loaded):
    spec = artifact / art.SPEC
    spec.write_text(spec.read_text().replace("units: 84", "units: 85"))
    rehash(artifact)
    refused(artifact, "do not match|recompile")


@pytest.mark.parametrize("device", ["cuda"])
def test_cpu_artifact_refused_for_another_device(artifact, never_loaded, device):
    message = refused(artifact, "compiled for target 'cpu'", device=device)
    assert "--target cuda" in message


def test_library_for_a_cpu_this_machine_lacks(artifact, never_loaded):
    rewrite_manifest(artifact, lambda m: m["target"].update(cpu_flags=["avx9000_imaginary"]))
    # checked at load, before the library is opened
    with pytest.raises(ArtifactError, match="avx9000_imaginary"):
        cc.load(artifact)


def test_refusals_are_cnnc_errors():
    assert issubclass(ArtifactError, CnncError)


def test_manifest_records_every_file(built):
    manifest = art.verify(built, "cpu")
    assert set(manifest["files"]) == {art.LIBRARY, art.WEIGHTS, art.SPEC, art.REPORT}
    for name, entry in manifest["files"].items():
        assert entry == art.file_entry(built / name)
    assert manifest["format"] == art.FORMAT and manifest["format_version"] == art.FORMAT_VERSION
    assert manifest["spec"]["name"] == "lenet5"
    assert manifest["input"] == {"name": "x", "shape": ["N", 1, 32, 32], "dtype": "float32"}


def test_failed_compile_leaves_no_artifact(tmp_path, monkeypatch):
    from cnncompiler import backends

    def broken(*args, **kwargs):
        raise cc.CompileError("code generation failed on purpose")

    monkeypatch.setattr(backends, "build_library", broken)
    out = tmp_path / "out"
    with pytest.raises(cc.CompileError, match="on purpose"):
        cc.compile(spec_path("lenet5"), output_dir=out)
    assert list(tmp_path.iterdir()) == [], "a failed compile left files behind"


def test_compile_refuses_to_overwrite_a_directory_that_is_no_artifact(tmp_path):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    with pytest.raises(CnncError, match="not a cnnc artifact; refusing to overwrite"):
        cc.compile(spec_path("lenet5"), output_dir=out)
    assert (out / "thesis.tex").read_text() == "years of work"
    assert [p.name for p in tmp_path.iterdir()] == ["precious"]


def test_recompiling_replaces_an_artifact_whole(tmp_path):
    out = tmp_path / "lenet5"
    first = cc.compile(spec_path("lenet5"), output_dir=out, seed=0).params
    second = cc.compile(spec_path("lenet5"), output_dir=out, seed=1)
    reloaded = cc.load(out)
    for k, v in second.params.items():
        np.testing.assert_array_equal(reloaded.params[k], v)
    assert any(not np.array_equal(reloaded.params[k], first[k]) for k in first)
    assert [p.name for p in tmp_path.iterdir()] == ["lenet5"], "staging directories were left"


@pytest.mark.parametrize("edit,field", [
    (lambda m: m["target"].update(cpu_flags=5), "field 'target.cpu_flags' is 5; expected a list"),
    (lambda m: m["target"].update(kind="tpu"), "field 'target.kind' is \"tpu\"; expected one of"),
    (lambda m: m.update(batch_sizes=["2"]), "field 'batch_sizes[0]' is \"2\"; expected a "
                                            "positive integer"),
    (lambda m: m.update(batch_sizes=[True]), "field 'batch_sizes[0]' is true"),
    (lambda m: m["kernel_args"][0].update(shape="big"), "field 'kernel_args[0].shape' is "
                                                         "\"big\"; expected a list"),
    (lambda m: m["files"][art.WEIGHTS].update(size="many"), "field 'files.weights.safetensors."
                                                            "size' is \"many\""),
    (lambda m: m["optimization"].update(passes=5), "field 'optimization.passes' is 5"),
    (lambda m: m["spec"].pop("name"), "field 'spec.name' is missing"),
])
def test_manifest_fields_of_the_wrong_type_are_refused_by_name(artifact, never_loaded, edit,
                                                               field):
    rewrite_manifest(artifact, edit)
    message = refused(artifact, "manifest.json")
    assert field in message and "recompile" in message


def test_a_batch_size_the_library_lacks_is_refused_by_name(artifact):
    rewrite_manifest(artifact, lambda m: m.update(batch_sizes=[2]))
    with pytest.raises(ArtifactError, match="field 'batch_sizes' lists 2, but the library has "
                                            "no function main_b2"):
        cc.load(artifact)


@pytest.mark.parametrize("text", ["[" * 100_000, '{"a":' * 100_000])
def test_absurdly_nested_manifest_is_refused(artifact, never_loaded, text):
    (artifact / art.MANIFEST).write_text(text)
    refused(artifact, "manifest is corrupt \\(nested too deeply\\)")

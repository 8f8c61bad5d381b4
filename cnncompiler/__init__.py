"""cnnc: a declarative graph compiler for convolutional neural networks.

    import cnncompiler as cc
    graph, warnings = cc.check("specs/lenet5.yaml")
    model = cc.compile("specs/lenet5.yaml", target="cpu")
    y = model.predict(x)
    model.save("build/lenet5"); model = cc.load("build/lenet5")

Importing cnncompiler does not import TVM; compiling does, running needs only its runtime.
Kernels run on one thread per physical core unless ``TVM_NUM_THREADS`` says otherwise.
"""

__version__ = "0.1.0"

from .threads import ensure_thread_count  # noqa: E402

ensure_thread_count()  # before TVM's thread pool starts: it reads the count once

from . import datasets, train  # noqa: E402
from .compiler import compile  # noqa: E402
from .errors import (ArtifactError, BusyError, CnncError, CompileError,  # noqa: E402
                     InputError, NonFiniteError, SpecError)
from .graph import load_checked as check  # noqa: E402
from .runtime.model import CompiledModel  # noqa: E402
from .train.model import TrainableModel, load  # noqa: E402

__all__ = ["ArtifactError", "BusyError", "CnncError", "CompileError", "CompiledModel",
           "InputError", "NonFiniteError", "SpecError", "TrainableModel", "check", "compile",
           "datasets", "load", "train", "__version__"]

"""Target-specific lowering: the layer graph to TVM, and TVM to CPU (LLVM) or CUDA code.

Installed as ``cnncompiler.backends``. Everything that imports tvm's compiler lives here; the
front end (spec, layers, graph, passes, reference) never does.
"""

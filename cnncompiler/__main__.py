"""``python -m cnncompiler``: the ``cnnc`` command (torchrun starts training processes so:
``torchrun --nproc_per_node 2 -m cnncompiler train ...``)."""

from .cli import main

raise SystemExit(main())

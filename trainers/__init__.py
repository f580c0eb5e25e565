"""prefcurate's training backend: plain PyTorch + transformers.

It reads only the splits that ``prefcurate route`` writes (the ``route`` column is the contract) and
trains MixDPO or a baseline on any Hugging Face causal LM. Importing :mod:`prefcurate` never imports
this package or torch; the CLI imports it only for ``train``, ``score`` and ``bench``.
"""

import logging as _logging

# transformers imports torchao (when installed) as it loads any model; torchao then warns, once
# per file, that its CUDA kernels do not load on a CPU build of torch, and torch warns that
# torchao registers an enum for torch.compile. Neither concerns a prefcurate run.
for _name in ("torchao", "torch.utils._pytree"):
    _logging.getLogger(_name).setLevel(_logging.ERROR)

"""prefcurate's training backend: plain PyTorch + transformers.

It reads only the splits that ``prefcurate route`` writes (the ``route`` column is the contract) and
trains MixDPO or a baseline on any Hugging Face causal LM. Importing :mod:`prefcurate` never imports
this package or torch; the CLI imports it only for ``train``, ``score`` and ``bench``.
"""

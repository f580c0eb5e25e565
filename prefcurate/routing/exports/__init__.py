"""A routed split in the layouts other engines read unchanged, one module per engine.

- ``common``        the file names and :func:`~.common.mixdpo_frame` (the pairs in rank order)
- ``trl``           TRL: dpo.jsonl + sft.jsonl, or mixdpo.jsonl for MixDPOTrainer
- ``llamafactory``  a LLaMA-Factory dataset folder (two datasets, two stages)
- ``openrlhf``      OpenRLHF's JSONL files (two stages)
- ``registry``      ``--export NAME`` → its writer: :data:`~.registry.EXPORTS`, ``export_split``
"""

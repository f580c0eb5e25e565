"""A routed split in the layouts other engines read unchanged, one module per engine.

- ``common``        the split read (train + eval), file names, pairs in rank order, messages
- ``trl``           TRL: dpo.jsonl + sft.jsonl, or mixdpo.jsonl for MixDPOTrainer
- ``llamafactory``  a LLaMA-Factory dataset folder (two datasets, two stages)
- ``openrlhf``      OpenRLHF's JSONL files (two stages)
- ``registry``      ``--export NAME[,NAME]`` → writers: :data:`~.registry.EXPORTS`, ``export_split``
"""

"""Deciding each pair's route and order, and writing that decision as split files.

- ``plan``      plan_routes: a RoutePlan (routes, ranks, stages, held-out and dropped pairs)
- ``writer``    write_route / write_split: the split files, in rank order, atomically
- ``presets``   ``--preset NAME``: a paper's route and train settings
- ``exports``   the split in the formats of other engines (TRL, LLaMA-Factory, OpenRLHF)
"""

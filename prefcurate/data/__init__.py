"""Loading preference pairs into the canonical schema, and the split contract.

- ``schema``    canonical columns, routes, split columns: the contract the trainer reads
- ``sources``   files, globs, compression, content hashes
- ``layouts``   detecting and normalising the dataset layouts
- ``io``        open_pairs / scan_pairs / read_pairs (a PairSource), JSONL diagnostics
- ``margins``   margin and difficulty, τ / fraction checks, τ from a fraction
- ``synth``     synthetic pairs with known ratings

The trainer floor may import ``schema``.
"""

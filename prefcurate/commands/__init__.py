"""The library behind each data command: read its inputs, compute, render, write its outputs.

The packages below each own one thing (loading, routing, reporting) and never decide what a
command writes; these functions do, and ``prefcurate.cli`` only parses flags and prints.

- ``analyze``  the report folder: report.json, the PNGs and the inspect page, all or nothing
- ``route``    the split folder: the split files and plan.json, plus the figures of its pairs
- ``inspect``  the inspect page of data, a split or a run, and the guard of its ``--out`` file
"""

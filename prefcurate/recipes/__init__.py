"""Recipes: small readable modules that compose the data floor and the trainer floor.

The toy task, its gold reward, the base policy, the benchmark and its report, the demo, and the
model-driven half of ``score`` live here. Only recipes and the CLI may import both
:mod:`prefcurate` (data) and :mod:`trainers` (torch); see docs/architecture.md.
"""

"""Adapters to other training engines (for instance TRL), for people who stay on them.

An integration may import the engine it adapts and both floors, like a recipe; the data floor and
the trainer never import an integration. See docs/architecture.md. Each module imports the engine
it adapts (``prefcurate.integrations.trl`` imports TRL), so none is imported by
``import prefcurate``; install the matching extra (``pip install prefcurate[trl]``).
"""

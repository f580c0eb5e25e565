"""Adapters that run prefcurate's method inside other training engines.

Each module imports the engine it adapts (``prefcurate.integrations.trl`` imports TRL), so none is
imported by ``import prefcurate``; install the matching extra (``pip install prefcurate[trl]``).
"""

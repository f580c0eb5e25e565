"""prefcurate: see the margin structure of a preference dataset, route it, and train MixDPO.

The data side (this package) never imports torch. A notebook gets the same figures as the CLI::

    >>> import prefcurate
    >>> source = prefcurate.open_pairs("pairs.jsonl")   # doctest: +SKIP
    >>> source.layout, source.collect().height          # doctest: +SKIP
"""

__version__ = "0.1.0"

"""The small pieces every other package stands on; none of them knows about pairs or routes.

- ``errors``     InputError(what, where, fix): one line at the edge, exit 2; PrefcurateError
- ``atomic``     atomic_file / atomic_dir: an output appears whole or not at all
- ``outdir``     the ``--out`` guard: what prefcurate may replace, its manifest and lock
- ``interrupt``  Ctrl-C and SIGTERM: one line, exit 130/143, temporaries removed
- ``progress``   bars and status lines on a terminal, plain lines when piped
- ``cachedir``   default_cache_dir: one rule for every cache
- ``sizes``      sizes such as ``2GiB`` parsed one way, the memory budget, an input's size
- ``duck``       DuckDB connections that never install or load an extension
- ``log``        the library's warnings as one line each (other libraries' only with --debug)

The trainer floor may import ``errors``, ``atomic``, ``outdir``, ``interrupt``, ``cachedir``,
``log`` and ``sizes`` (``--max-shard-size`` is read in the one vocabulary of sizes).
"""

"""The embedded DuckDB catalog of runs, and the sandbox that runs a user's SQL.

- ``store``  the catalog file: where it lives, its schema and migrations, record_run, list_runs
- ``sql``    a user's SQL (``prefcurate sql``, ``route --drop``), read-only and reaching no file
"""

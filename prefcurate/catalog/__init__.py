"""The embedded DuckDB catalog of runs, and the sandbox that runs a user's SQL.

- ``store``  connect, record_run, list_runs, query: the catalog file and its schema
"""

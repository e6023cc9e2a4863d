"""Benchmarks for the targets in the performance notes, run as ``python -m bench``.

Each benchmark creates its own data in its own database (``bench_<configured name>``
on the configured server, created and migrated with Django's test-database machinery,
dropped afterwards), so it never touches development data. Results are printed one
line per figure and written to ``docs/benchmarks.md``.
"""

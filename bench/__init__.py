"""Benchmarks: commands that measure, record and compare (see bench/RESULTS.md).

Every benchmark is a module run as `python -m bench.<name>`; `--smoke` runs it
with tiny sizes (the test suite does, so nothing here rots) and never touches
the recorded results.
"""

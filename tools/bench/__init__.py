"""Benchmarks: each module prints a rich table with the command that made it and writes JSON."""

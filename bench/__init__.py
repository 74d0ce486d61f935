"""Benchmarks: each prints a table and writes bench/out/<name>.json (see DESIGN.md)."""

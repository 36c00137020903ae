"""Benchmarks: kvmcore against drgn, crash and gdb on the cached sample dumps
(`python -m bench`), and how kvmcore's cost grows with guest memory and task
count (`python -m bench --scale`).  Timings are printed and written to
bench/RESULTS.md; nothing here asserts a timing."""

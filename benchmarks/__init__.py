"""Benchmarks: `python -m benchmarks.throughput` (train-step, loop and input img/s against peers)
and `python benchmarks/compile_time.py` (compile time of deep nets, scan on and off)."""

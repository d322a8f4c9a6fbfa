"""flanx benchmarks: throughput against Hugging Face transformers, data pipeline rate, MFU.

`make bench` runs `python -m benchmarks.run_all` (CPU tables, JSON in
benchmarks/results/); `benchmarks/mfu.py` and `benchmarks/gpu_check.sh` measure
model FLOPs utilization on a GPU. See benchmarks/README.md and docs/performance.md.
"""

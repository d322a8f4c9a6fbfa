"""flanx launchers: `local.py` (N processes on one machine), `slurm.py` (GPU clusters), `tpu_pod.py` (TPU VM slices).

Run them as scripts (`python launch/slurm.py --help`); `common.py` holds what they share.
"""

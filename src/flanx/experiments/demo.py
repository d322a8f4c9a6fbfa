"""`make demo` / `flanx demo`: the forgetting study on built-in synthetic data.

Runs `t5x_configs/experiments/forgetting_synthetic.gin` (tiny byte-level T5,
synthetic customer-service chats plus small instruction tasks) into
`runs/demo/` and prints where the report is. Needs no data files and no
network; extra `--gin.NAME=VALUE` overrides pass through.
"""
from __future__ import annotations

import sys

from flanx.experiments import cli


def main(argv: list[str]) -> int:
    return cli.main(["forgetting", "--gin_file", cli.DEFAULT_GIN, *argv])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

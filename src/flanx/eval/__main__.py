"""`python -m flanx.eval --gin_file=... --gin.NAME=VALUE`: see flanx.entrypoints.eval."""
import sys

from flanx.errors import run
from flanx.entrypoints import eval as eval_main

sys.exit(run(eval_main, sys.argv[1:], prog="flanx eval"))

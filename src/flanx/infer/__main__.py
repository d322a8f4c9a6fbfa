"""`python -m flanx.infer --gin_file=... --gin.NAME=VALUE`: see flanx.entrypoints.infer."""
import sys

from flanx.errors import run
from flanx.entrypoints import infer

sys.exit(run(infer, sys.argv[1:], prog="flanx infer"))

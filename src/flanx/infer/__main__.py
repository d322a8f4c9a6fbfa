"""`python -m flanx.infer --gin_file=... --gin.NAME=VALUE`: see flanx.entrypoints.infer."""
import sys

from flanx.entrypoints import infer

sys.exit(infer(sys.argv[1:]))

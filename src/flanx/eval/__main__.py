"""`python -m flanx.eval --gin_file=... --gin.NAME=VALUE`: see flanx.entrypoints.eval."""
import sys

from flanx.entrypoints import eval as eval_main

sys.exit(eval_main(sys.argv[1:]))

"""`python -m flanx.train --gin_file=... --gin.NAME=VALUE`: see flanx.entrypoints.train."""
import sys

from flanx.entrypoints import train

sys.exit(train(sys.argv[1:]))

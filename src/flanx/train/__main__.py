"""`python -m flanx.train --gin_file=... --gin.NAME=VALUE`: see flanx.entrypoints.train."""
import sys

from flanx.errors import run
from flanx.entrypoints import train

sys.exit(run(train, sys.argv[1:], prog="flanx train"))

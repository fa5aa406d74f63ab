"""`python -m m2f_devcluster serve ...`: the dev cluster's daemon process (started by `m2f dev up`)."""

import sys

from m2f_devcluster.cli import main

sys.exit(main(sys.argv[1:]))

"""`python -m m2f_operator`: run the operator."""

import sys

from m2f_operator.main import main

sys.exit(main())

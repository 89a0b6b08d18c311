"""`python -m lmlab VERB ...`: the same command line as `lmlab VERB ...`."""

import sys

from lmlab.cli import main

sys.exit(main())

"""`make bench`: lbcore next to HAProxy and nginx in one run (see harness.py)."""

import sys

from bench.harness import main

sys.exit(main())

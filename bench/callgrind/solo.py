"""One lbcore worker in this very process, so valgrind sees it (the master
would exec the worker out of valgrind's reach): `python solo.py lb.yaml`."""

import sys

from lbcore.config import load_config
from lbcore.worker import serve

sys.exit(serve(load_config(sys.argv[1])))

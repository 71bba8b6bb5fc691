"""``python -m distpar.worker``: the worker entry point every backend runs (see ``distpar.worker.serve.main``)."""

import sys

from distpar.worker.serve import main

sys.exit(main())

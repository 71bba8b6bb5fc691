"""``python -m distpar.worker``: the worker entry point every backend runs (see ``distpar.worker.worker.main``)."""

from distpar.worker.worker import main

main()

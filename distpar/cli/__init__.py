"""The command line: the only place that prints or exits (``distpar.cli.main``; the run options' flags are
derived in ``distpar.cli.options``)."""

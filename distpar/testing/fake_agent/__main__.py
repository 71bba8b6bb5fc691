"""``python -m distpar.testing.fake_agent``: the same as the ``distpar-fake-agent`` console script."""

from distpar.testing.fake_agent import main

main()

"""``python -m opsline``: the command line, as the ``opsline`` script runs it."""

from opsline.cli import main

main()

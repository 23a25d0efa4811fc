"""``python -m dnmf`` is the ``dnmf`` command line."""

from .cli import main

main()

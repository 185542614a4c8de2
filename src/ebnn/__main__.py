"""``python -m ebnn`` (and ``torchrun -m ebnn``): the ``ebnn`` command."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())

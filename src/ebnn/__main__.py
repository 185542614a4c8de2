"""`python -m ebnn ...` runs the command line, like the `ebnn` script."""

import sys

from .cli import main

sys.exit(main())

"""`python -m dchml ...` runs the `dchml` command line."""
import sys

from .cli import main

sys.exit(main())

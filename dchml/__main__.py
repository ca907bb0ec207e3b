"""`python -m dchml ...` runs the `dchml` command line."""
import sys

from .app.cli import main

sys.exit(main())

"""`python -m maskx.orchestrator.cli`, as the `maskx` command."""
import sys

from . import main

sys.exit(main())

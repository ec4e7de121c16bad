"""`python -m collector.cli`: the `evalterm` command."""

import sys

from collector.cli import main

sys.exit(main())

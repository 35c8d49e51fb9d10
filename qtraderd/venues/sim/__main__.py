"""`python -m qtraderd.venues.sim ...` = `qtraderd exchange-sim ...`."""

import sys

from qtraderd.cli import main

raise SystemExit(main(["exchange-sim", *sys.argv[1:]]))

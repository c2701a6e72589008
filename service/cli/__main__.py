"""`python -m service.cli`: the same entry point as the `codat-relay` console script."""

import sys

from service.cli.entry import main

sys.exit(main())

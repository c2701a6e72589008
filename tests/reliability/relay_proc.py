"""`codat-relay` with the recording handler installed: `python -m tests.reliability.relay_proc serve`.

The registry is the one dict the runtime reads when it builds its workers, so replacing its
`dataset_status` entry here, before the CLI builds the app, is all it takes.
"""

from __future__ import annotations

import sys

import handlers
from service.cli import entry as cli
from service.types import AlertKind
from tests.reliability.recording_handlers import record


def main() -> int:
    handlers.REGISTRY[AlertKind.DATASET_STATUS] = record
    return cli.main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())

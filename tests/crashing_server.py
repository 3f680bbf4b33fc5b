"""``mqroute server`` whose store kills the process (SIGKILL) at a commit, for crash tests:

    python tests/crashing_server.py before-commit|after-commit N --port P --data-dir D

It dies at the N-th batch that holds a message: before it is written (nothing of it is on
disk) or right after its commit (on disk, but not confirmed). Production code knows nothing
of this; the test installs the store.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
from collections.abc import Sequence
from pathlib import Path

from mqroute.records import PutMessage, Record
from mqroute.server import ServerConfig, startup
from mqroute.server.datadir import DataDirLock
from mqroute.server.store import SqliteStore


class KillingStore(SqliteStore):
    def __init__(self, data_dir: Path, point: str, at: int) -> None:
        super().__init__(data_dir)
        self.point, self.at, self.batches = point, at, 0

    def write(self, records: Sequence[Record]) -> None:
        at_fault = False
        if any(type(r) is PutMessage for r in records):
            self.batches += 1
            at_fault = self.batches == self.at
        if at_fault and self.point == "before-commit":
            os.kill(os.getpid(), signal.SIGKILL)
        super().write(records)
        if at_fault and self.point == "after-commit":
            os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("point", choices=["before-commit", "after-commit"])
    parser.add_argument("at", type=int)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--data-dir", type=Path, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    with DataDirLock(args.data_dir):
        store = KillingStore(args.data_dir, args.point, args.at)
        startup.run(ServerConfig(port=args.port, data_dir=args.data_dir), store=store)


if __name__ == "__main__":
    main()

"""Entry point of the frozen runtime: ``multiprocessing.freeze_support()`` first, then ``edgeseg.cli.main``.

Windows frozen apps that start worker processes re-run this file in each child; ``freeze_support`` turns such a
child into the worker instead of a second command line (TotalSegmentator #190).
"""
from __future__ import annotations

import multiprocessing
import sys

if __name__ == "__main__":
    multiprocessing.freeze_support()
    from edgeseg.cli import main

    sys.exit(main())

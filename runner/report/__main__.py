"""``python -m runner.report DIR``."""

import sys

from runner.report.command import main

sys.exit(main())

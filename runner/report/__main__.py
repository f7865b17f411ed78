"""``python -m runner.report DIR [DIR ...] [--out DIR]``: rebuild the sweep table and chart."""

import sys

from runner.report.recommend import main

sys.exit(main())

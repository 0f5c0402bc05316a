"""``python -m pillsnap.report FILE...`` validates reports; ``--write-schema`` regenerates the schema."""

import sys

from pillsnap.report.schema import main

sys.exit(main())

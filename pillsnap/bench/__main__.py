"""``python -m pillsnap.bench FILE...`` validates records; ``--write-schema`` regenerates the schema."""

import sys

from pillsnap.bench.schema import main

sys.exit(main())

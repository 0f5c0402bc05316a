"""``python -m pillsnap.release ...`` is ``pillsnap release ...`` (same error handling and exit codes)."""

import sys

from pillsnap.cli import main

sys.exit(main(["release", *sys.argv[1:]]))

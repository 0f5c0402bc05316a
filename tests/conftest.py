"""Shared by every test folder: the helpers next to this file (``_tiny``, ``_demo_release``,
``_report_example``) are importable from the sub-folders that mirror ``pillsnap/``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

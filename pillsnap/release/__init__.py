"""The release: tag -> stage notebooks -> manifest -> promote, and the checks of a finished one.

``run`` drives a release, ``stages`` executes one notebook, ``promote`` moves the
folder through its life cycle, ``manifest`` writes and verifies ``manifest.json``,
``diff`` compares two releases, ``cli`` is ``pillsnap release``.
"""

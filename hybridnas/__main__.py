"""``python -m hybridnas``: the same as the ``hybridnas`` command."""

import sys

from hybridnas.cli import main

sys.exit(main())

"""``python -m grulm.cli``: the same as the ``grulm`` command."""

import sys

from grulm.cli import main

sys.exit(main())

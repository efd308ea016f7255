"""``python -m grulm``: the same as the ``grulm`` command (``torchrun … -m grulm train …``)."""

import sys

from grulm.cli import main

sys.exit(main())

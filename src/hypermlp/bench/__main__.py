"""``python -m hypermlp.bench`` is ``hypermlp bench``."""

import sys

from .cli import main

sys.exit(main())

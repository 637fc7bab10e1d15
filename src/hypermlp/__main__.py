"""``python -m hypermlp ...`` is the ``hypermlp`` command."""

import sys

from .cli import main

sys.exit(main())

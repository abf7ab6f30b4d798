"""``python -m bayesmeta.cli``: the same as the ``bayesmeta`` command."""
import sys

from bayesmeta.cli import main

sys.exit(main())

"""``python -m pynet ...`` is the ``pynet`` command."""
import sys

from pynet.cli import main

sys.exit(main())

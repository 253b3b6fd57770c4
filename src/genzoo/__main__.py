"""``python -m genzoo``: the same command line as the ``genzoo`` script."""
import sys

from genzoo.cli import main

sys.exit(main())

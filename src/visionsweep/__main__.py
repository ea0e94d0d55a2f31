"""``python -m visionsweep``: the command-line tool (what torchrun's ``--module visionsweep`` runs)."""
import sys

from visionsweep.cli import main

sys.exit(main())

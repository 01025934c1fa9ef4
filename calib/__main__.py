"""``python -m calib``: the command line (:mod:`calib.cli`); also what ``torchrun -m calib`` runs."""
import sys

from calib.cli import main

sys.exit(main())

"""`python cli.py ...` from a clone: calib's command line (calib.cli), with nothing installed under this name."""
import sys

from calib.cli import main

if __name__ == "__main__":
    sys.exit(main())

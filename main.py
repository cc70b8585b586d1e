"""`python main.py [flags]`: the same command line as the installed `sttrl`."""
import sys

from sttrl.cli import main

if __name__ == "__main__":
    sys.exit(main())

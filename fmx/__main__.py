import sys

from fmx.cli import main

sys.exit(main())

import sys

from medjax.cli import main

sys.exit(main())

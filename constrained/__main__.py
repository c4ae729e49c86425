import sys

from constrained.cli import main

sys.exit(main())

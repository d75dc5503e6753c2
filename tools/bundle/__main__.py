"""`python -m tools.bundle`: the same as `fedge bundle`."""

import sys

from tools.bundle import main

sys.exit(main())

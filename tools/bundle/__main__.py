"""`python -m fedge.tools.bundle`: the same as `fedge bundle`."""

import sys

from fedge.tools.bundle import main

sys.exit(main())

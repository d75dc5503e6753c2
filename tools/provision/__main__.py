"""`python -m tools.provision ...` runs `fedge provision` without the full CLI."""

from fedge.tools.provision.command import main

raise SystemExit(main())

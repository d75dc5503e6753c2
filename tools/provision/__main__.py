"""`python -m tools.provision ...` runs `fedge provision` without the full CLI."""

from tools.provision.command import main

raise SystemExit(main())

"""``python -m sandbox_gateway`` entry point."""

from sandbox_gateway.server import main

raise SystemExit(main())

"""``python -m payments.sandbox_gateway`` entry point."""

from payments.sandbox_gateway.server import main

raise SystemExit(main())

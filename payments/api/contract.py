"""Every limit and pattern of the public contract (``shared/spec/API.md``), defined once.

The validators, the OpenAPI declarations and the error messages all read them from here.
"""

from __future__ import annotations

import re

MAX_PAYEE_NAME = 140
MAX_PAYEE_ACCOUNT = 64
MAX_DESCRIPTION = 140
MAX_METADATA_KEYS = 20
MAX_METADATA_KEY = 40
MAX_METADATA_VALUE = 500

# A gateway payment-method token, never card data.
PAYMENT_METHOD_REGEX = r"pm_[A-Za-z0-9_]{3,100}"
PAYMENT_METHOD_PATTERN = re.compile(PAYMENT_METHOD_REGEX)

# Idempotency-Key: 1-255 printable ASCII characters (space to tilde).
IDEMPOTENCY_KEY_REGEX = r"[ -~]{1,255}"
IDEMPOTENCY_KEY_PATTERN = re.compile(IDEMPOTENCY_KEY_REGEX)

# Listing: page size.
DEFAULT_LIMIT = 50
MAX_LIMIT = 200

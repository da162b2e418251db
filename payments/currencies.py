"""Supported ISO 4217 currencies and their minor-unit exponents.

Amounts are stored as integers in minor units (cents, fils, yen): exact, and
the exponent here is the single place that knows how many decimals a currency has.
"""

from __future__ import annotations

from decimal import Decimal

CURRENCY_EXPONENTS: dict[str, int] = {
    "AUD": 2,
    "BHD": 3,
    "CAD": 2,
    "CHF": 2,
    "CZK": 2,
    "DKK": 2,
    "EUR": 2,
    "GBP": 2,
    "HKD": 2,
    "JOD": 3,
    "JPY": 0,
    "KRW": 0,
    "KWD": 3,
    "NOK": 2,
    "NZD": 2,
    "OMR": 3,
    "PLN": 2,
    "SEK": 2,
    "SGD": 2,
    "USD": 2,
}


def to_minor_units(amount: Decimal, currency: str) -> int:
    """Exact conversion; the caller has checked the number of decimals."""
    return int(amount.scaleb(CURRENCY_EXPONENTS[currency]))


def format_minor_units(amount_minor: int, currency: str) -> str:
    """``12550, "EUR"`` → ``"125.50"``; ``500, "JPY"`` → ``"500"``."""
    exponent = CURRENCY_EXPONENTS[currency]
    value = Decimal(amount_minor).scaleb(-exponent)
    return f"{value:.{exponent}f}"

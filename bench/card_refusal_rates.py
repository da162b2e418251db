"""Measure how often random account numbers are refused as card numbers (``docs/security.md`` §1).

``python -m bench.card_refusal_rates`` draws random digit strings of 8-34 digits (a
fixed seed, so the figures are reproducible), asks ``contains_card_number`` about each,
and writes the refused share per length, beside what the brand rules imply (prefix
share times 1/10 for Luhn), to ``bench/results/card-refusal-rates.json``.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from common.card_data import CARD_BRANDS, contains_card_number

RESULT = Path(__file__).resolve().parent / "results" / "card-refusal-rates.json"


def implied_rate(length: int) -> float:
    """Share of 6-digit prefixes some brand issues at this length, times Luhn's 1 in 10."""
    intervals = sorted(
        (int(low.ljust(6, "0")), int(high.ljust(6, "9")) + 1)
        for _, low, high, lengths in CARD_BRANDS
        if length in lengths
    )
    covered, reach = 0, 0
    for start, end in intervals:
        start = max(start, reach)
        if end > start:
            covered += end - start
            reach = end
    return covered / 10**6 / 10


def measure(samples: int, seed: int) -> list[dict[str, float | int]]:
    rng = random.Random(seed)
    rows: list[dict[str, float | int]] = []
    for length in range(8, 35):
        refused = sum(contains_card_number("".join(rng.choices("0123456789", k=length))) for _ in range(samples))
        rows.append(
            {
                "length": length,
                "samples": samples,
                "refused": refused,
                "rate": refused / samples,
                "implied": implied_rate(length),
            }
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args()
    rows = measure(args.samples, args.seed)
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps({"seed": args.seed, "rows": rows}, indent=2) + "\n")
    for row in rows:
        print(f"{row['length']:>2} digits: refused {row['rate']:.4%} (brand rules imply {row['implied']:.4%})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

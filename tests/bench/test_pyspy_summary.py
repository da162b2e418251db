"""The py-spy summary of the benchmark (bench/pyspy.py) holds its invariants for every split of samples.

A property test over random sample counts: the smoke test once failed by chance because
rounded shares of an uneven split summed to 1.003; the same check applied here to every split.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from bench import pyspy
from bench.profiler import PROJECT_ROOT
from tests.bench.test_bench_smoke import assert_shares_are_shares

# Frames as py-spy --format raw writes them: "function (file:line)", outermost first.
_LEAVES = [
    "execute (/venv/lib/python3.11/site-packages/django/db/backends/utils.py:100)",
    "render (/venv/lib/python3.11/site-packages/rest_framework/renderers.py:90)",
    "read (/venv/lib/python3.11/site-packages/psycopg/connection.py:10)",
    "emit (/usr/lib/python3.11/logging/__init__.py:1000)",
    f"payment_create ({PROJECT_ROOT}payments/services.py:42)",
    f"charge ({PROJECT_ROOT}payments/gateways/sandbox.py:7)",
    "loads (~:0)",
    "handle (/venv/lib/python3.11/site-packages/gunicorn/workers/gthread.py:5)",
    "publish (/venv/lib/python3.11/site-packages/kombu/messaging.py:8)",
    "dumps (/usr/lib/python3.11/json/encoder.py:3)",
]
_ROOT = f'process 1:"gunicorn";thread (0x1);handle_request ({PROJECT_ROOT}config/wsgi.py:1)'


def collapsed(counts: list[int]) -> str:
    return "\n".join(f"{_ROOT};{leaf} {count}" for leaf, count in zip(_LEAVES, counts, strict=False) if count)


@settings(max_examples=300, deadline=None)
@given(
    counts=st.lists(st.integers(min_value=0, max_value=50_000), min_size=1, max_size=len(_LEAVES)),
    top=st.integers(min_value=1, max_value=12),
)
def test_the_summary_holds_for_every_split_of_samples(counts: list[int], top: int) -> None:
    # given collapsed stacks with any split of samples between packages
    profile = pyspy.summarize(collapsed(counts), top=top)

    # then counts add up and every share is its count's rounded fraction
    assert profile["samples"] == sum(counts)
    assert_shares_are_shares(profile, "random split")
    # and every sampled stack runs through this project's code, so it is counted inclusively
    if profile["samples"]:
        assert profile["ours_inclusive"][0]["samples"] == profile["samples"]


def test_rounded_shares_of_an_uneven_split_can_exceed_one() -> None:
    # given a split whose ten rounded shares sum to 1.004 (the old check allowed 1.001)
    counts = [47, 3, 5, 23, 15, 43, 43, 51, 49, 1713]
    profile = pyspy.summarize(collapsed(counts), top=12)

    # then the counts still add up exactly, which is what the check now compares
    assert sum(entry["share"] for entry in profile["by_package"]) > 1.001
    assert_shares_are_shares(profile, "uneven split")
    assert sum(entry["samples"] for entry in profile["by_package"]) == profile["samples"] == sum(counts)

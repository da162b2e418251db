"""Specification of common.card_data: card numbers are found, refused and never logged.

Deliberately naive reference implementations of the two documented rules (below) are
the oracles for the property tests; the module's fast versions must agree with them.
The refusal rule is the contract's (brand prefix and length, Luhn); the masking rule
for logs is wider on purpose (any Luhn-valid span, windows of long groups).
"""

from __future__ import annotations

import io
import logging
import os
import random
import re
import time
from collections.abc import Iterator

import pytest
import structlog
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from common.card_data import (
    CardNumberMaskingFilter,
    contains_card_number,
    find_card_data,
    mask_card_numbers,
    mask_event_dict,
    may_contain_card_number,
)

# Raise PROPERTY_EXAMPLES (e.g. to 20000) for a deeper hunt.
PROPERTY_SETTINGS = settings(max_examples=int(os.environ.get("PROPERTY_EXAMPLES", "500")), deadline=None)

VISA = "4111111111111111"
MASTERCARD = "5555555555554444"
AMEX = "378282246310005"
DISCOVER = "6011111111111117"
TEST_PANS = [VISA, MASTERCARD, AMEX, DISCOVER, "4222222222222", "6011000990139424", "3530111333300000"]
# Published test card numbers (Stripe, Adyen, Braintree, PayPal test docs), per brand.
PUBLISHED_TEST_PANS = {
    "visa": ["4242424242424242", "4000056655665556", "4111111111111111", "4222222222222", "4012888888881881"],
    "visa_19": ["4000000000000000006"],
    "mastercard": ["5555555555554444", "2223003122003222", "5200828282828210", "5105105105105100"],
    "amex": ["378282246310005", "371449635398431", "378734493671000"],
    "discover": ["6011111111111117", "6011000990139424", "6011981111111113", "6445644564456445"],
    "jcb": ["3566002020360505", "3530111333300000"],
    "unionpay": ["6200000000000005", "6205500000000000004", "6250941006528599"],
    "diners": ["3056930009020004", "36227206271667", "30569309025904", "38520000023237"],
    "maestro": ["6759649826438453", "6771798021000008", "5018000000000009"],
}
# The brand rules written out plainly: (prefix low, prefix high, lengths).
REFERENCE_BRANDS = [
    ("4", "4", {13, 16, 19}),
    ("51", "55", {16}),
    ("2221", "2720", {16}),
    ("34", "34", {15}),
    ("37", "37", {15}),
    ("6011", "6011", set(range(16, 20))),
    ("644", "649", set(range(16, 20))),
    ("65", "65", set(range(16, 20))),
    ("3528", "3589", set(range(16, 20))),
    ("62", "62", set(range(16, 20))),
    ("300", "305", set(range(14, 20))),
    ("36", "36", set(range(14, 20))),
    ("38", "39", set(range(14, 20))),
    ("493698", "493698", set(range(13, 20))),
    ("50", "50", set(range(13, 20))),
    ("56", "69", set(range(13, 20))),
]


# --- Reference implementation ------------------------------------------------------------


def luhn_valid(digits: str) -> bool:
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char) * (2 if position % 2 else 1)
        total += value - 9 if value > 9 else value
    return total % 10 == 0


def with_check_digit(body: str) -> str:
    return next(body + d for d in "0123456789" if luhn_valid(body + d))


def reference_fits_brand(digits: str) -> bool:
    return any(low <= digits[: len(low)] <= high and len(digits) in lengths for low, high, lengths in REFERENCE_BRANDS)


def reference_clabe_valid(digits: str) -> bool:
    if len(digits) != 18:
        return False
    total = sum(int(d) * w % 10 for d, w in zip(digits[:17], [3, 7, 1] * 6, strict=False))
    return (10 - total % 10) % 10 == int(digits[17])


def reference_card_candidates(text: str) -> Iterator[str]:
    """The refusal rule, written the slow and obvious way (no IBAN/UUID exemption)."""
    for run in re.findall(r"[0-9](?:[ -]?[0-9])*", text):
        groups = re.findall(r"[0-9]+", run)
        if reference_clabe_valid("".join(groups)):
            continue
        for i in range(len(groups)):
            for j in range(i + 1, len(groups) + 1):
                digits = "".join(groups[i:j])
                if reference_fits_brand(digits) and not reference_clabe_valid(digits):
                    yield digits


def reference_refuses(text: str) -> bool:
    return any(luhn_valid(candidate) for candidate in reference_card_candidates(text))


def reference_candidates(text: str) -> Iterator[str]:
    """The masking rule, written the slow and obvious way (no IBAN exemption)."""
    for run in re.findall(r"[0-9](?:[ -]?[0-9])*", text):
        groups = re.findall(r"[0-9]+", run)
        for i in range(len(groups)):
            for j in range(i + 1, len(groups) + 1):
                digits = "".join(groups[i:j])
                if 13 <= len(digits) <= 19:
                    yield digits
        for group in groups:
            if len(group) > 19:
                for width in range(13, 20):
                    for start in range(len(group) - width + 1):
                        yield group[start : start + width]


def reference_contains(text: str) -> bool:
    return any(luhn_valid(candidate) for candidate in reference_candidates(text))


def formatted(pan: str, separator: str, group: int = 4) -> str:
    return separator.join(pan[i : i + group] for i in range(0, len(pan), group))


# --- Detection -----------------------------------------------------------------------------


def test_the_reference_agrees_that_the_test_pans_are_luhn_valid() -> None:
    assert all(luhn_valid(pan) for pan in TEST_PANS)


@pytest.mark.parametrize("pan", TEST_PANS)
@pytest.mark.parametrize("separator", ["", " ", "-"])
def test_it_detects_known_test_card_numbers_written_in_any_usual_way(pan: str, separator: str) -> None:
    # Given a test card number alone, spaced or dashed, and inside a sentence
    text = formatted(pan, separator)
    # Then it is detected either way
    assert contains_card_number(text)
    assert contains_card_number(f"please charge {text}, thanks")


@pytest.mark.parametrize(
    ("brand", "pan"), [(brand, pan) for brand, pans in PUBLISHED_TEST_PANS.items() for pan in pans]
)
def test_every_published_test_card_number_is_refused_alone_grouped_and_in_text(brand: str, pan: str) -> None:
    assert luhn_valid(pan), brand
    for separator in ("", " ", "-"):
        written = formatted(pan, separator)
        assert contains_card_number(written)
        assert contains_card_number(f"please charge {written}, thanks")
        assert contains_card_number(f"card:{written}/exp 12/27")
        assert find_card_data({"payee": {"name": f"ACME {written}"}}) == ["payee.name"]


@pytest.mark.parametrize(
    "account",
    [
        "40817810099910004312",  # Russian 20-digit current account
        "40702810938000012345",
        "0123456789012345678901",  # a 22-digit reference
        "646180157000000004",  # an STP CLABE (Mexico) with a valid check digit, Discover-shaped
        "002010077777777771",  # a Banamex CLABE
        "DE89370400440532013000",
    ],
)
def test_account_numbers_are_not_card_numbers(account: str) -> None:
    assert not contains_card_number(account)
    assert not contains_card_number(f"pay to {account}, thanks")
    assert find_card_data({"payee": {"account": account}}) == []


def test_a_clabe_that_passes_luhn_is_still_an_account() -> None:
    # Given an STP CLABE (prefix 646: Discover's 644-649, 18 digits: a Discover length)
    # that happens to pass Luhn too
    clabe = next(
        body + check
        for serial in range(10_000)
        for body in [f"64618015700{serial:06d}"]
        for check in "0123456789"
        if reference_clabe_valid(body + check) and luhn_valid(body + check)
    )
    # Then its own check digit makes it an account, not a card
    assert not contains_card_number(clabe)
    # And the same digits with a wrong CLABE check digit but valid Luhn would be refused
    assert reference_fits_brand(clabe)


def implied_refusal_rate(length: int) -> float:
    """The share of random ``length``-digit numbers the brand rules allow, times Luhn's 1 in 10."""
    # Each brand range as an interval of 6-digit prefixes; their union's share of all prefixes.
    intervals = sorted(
        (int(low.ljust(6, "0")), int(high.ljust(6, "9")) + 1)
        for low, high, lengths in REFERENCE_BRANDS
        if length in lengths
    )
    covered, reach = 0, 0
    for start, end in intervals:
        start = max(start, reach)
        if end > start:
            covered += end - start
            reach = end
    return covered / 10**6 / 10


@pytest.mark.parametrize("length", range(8, 35))
def test_random_account_numbers_are_refused_at_most_at_the_brand_rate(length: int) -> None:
    # Given 4,000 random account numbers of this length (fixed seed: the same numbers each run)
    rng = random.Random(length)
    samples = 4000
    refused = sum(contains_card_number("".join(rng.choices("0123456789", k=length))) for _ in range(samples))
    rate = refused / samples
    if length < 13 or length >= 20:
        # Then numbers too short or too long for a card are never refused
        assert refused == 0
    else:
        # Then at most what prefix, length and Luhn imply (plus a 4-sigma sampling margin)
        implied = implied_refusal_rate(length)
        assert rate <= implied + 4 * (implied * (1 - implied) / samples) ** 0.5 + 1e-9, (length, rate, implied)


def test_it_detects_an_amex_number_in_its_4_6_5_grouping() -> None:
    assert contains_card_number("3782 822463 10005")
    assert contains_card_number("3782-822463-10005")


@pytest.mark.parametrize(
    "text",
    [
        "4111 1111 1111 1112",  # one digit off
        "4111-1111-1111-1113",
        "1234567812345678",
        "5555555555554445",
    ],
)
def test_it_ignores_a_16_digit_number_that_fails_luhn(text: str) -> None:
    # Given a Luhn-invalid 16-digit number (and so no Luhn-valid span of whole groups)
    assert not reference_contains(text)
    # Then it is not card data, even though some 13-15 digit slice of it may pass Luhn
    assert not contains_card_number(text)


def test_it_does_not_scan_inside_a_number_of_13_to_19_digits() -> None:
    # Given a Luhn-invalid 16-digit number whose first 15 digits pass Luhn
    first_15 = with_check_digit("41111111111111")
    text = next(first_15 + d for d in "0123456789" if not luhn_valid(first_15 + d))
    assert luhn_valid(text[:15])
    # Then it is not flagged: a number is checked as written (see the module doc)
    assert not contains_card_number(text)


@pytest.mark.parametrize("separators", ["4111  1111 1111 1111", "4111 -1111-1111-1111", "4111.1111.1111.1111"])
def test_only_single_spaces_or_dashes_join_digit_groups(separators: str) -> None:
    # Given a card number with separators the contract does not name: no 13-digit run
    assert not contains_card_number(separators)


def test_it_finds_a_card_number_next_to_other_numbers() -> None:
    # Given a card number written after an order number with a single space between them
    assert contains_card_number(f"order 12 {VISA}")
    assert contains_card_number(f"{formatted(VISA, ' ')} 12 27 123")


def test_a_card_glued_to_other_digits_is_not_refused_but_is_masked_in_logs() -> None:
    # Given a card number glued to its expiry date: 20 digits, too long to be one card
    # Then a request holding it is accepted (it is an account number's shape) ...
    assert not contains_card_number(f"{VISA}1227")
    assert not contains_card_number(f"999{VISA}999999")
    # ... but logs mask it all the same (the masking rule scans windows of long groups)
    assert may_contain_card_number(f"{VISA}1227")
    assert mask_card_numbers(f"{VISA}1227") == "*" * 16 + "1227"


def test_a_long_digit_string_is_never_refused() -> None:
    # A 20-digit reference number holds Luhn-valid windows, but is no card
    assert not contains_card_number("12345678901234567890")
    assert may_contain_card_number("12345678901234567890")


@pytest.mark.parametrize(
    "text",
    [
        "+1 415-555-0100",
        "+49 30 12345678",
        "0049 30 1234 567",  # 13 digits: checked, but not Luhn-valid
        "call 415-555-0100 or 415-555-0199",
        "2027-03-14T07:30:00Z",
        "2027-03-14 07:30",
        "amount 125.50 EUR",
        "0190f2c4-7a7e-7cc0-8d3b-5e1f0a9c4b21",  # a UUID (letters break its digit runs)
    ],
)
def test_it_leaves_phone_numbers_dates_and_ids_alone(text: str) -> None:
    # Phone numbers have at most 15 digits (E.164); up to 12 they are never candidates,
    # with 13-15 they are flagged only if they pass Luhn (as the contract's rule says)
    assert not contains_card_number(text)


@given(st.lists(st.text("0123456789", min_size=1, max_size=4), min_size=1, max_size=6), st.sampled_from(" -"))
def test_fewer_than_13_digits_are_never_a_card_number(groups: list[str], separator: str) -> None:
    text = separator.join(groups)
    if sum(map(len, groups)) < 13:
        assert not contains_card_number(text)


@pytest.mark.parametrize(
    "iban",
    [
        "DE89370400440532013000",
        "DE89 3704 0044 0532 0130 00",
        "de89 3704 0044 0532 0130 00",
        "GB82 WEST 1234 5698 7654 32",
        "GB82WEST12345698765432",
        "FR1420041010050500013M02606",
        "NL91ABNA0417164300",
    ],
)
def test_a_valid_iban_is_not_card_data(iban: str) -> None:
    # Given an IBAN (whose digits may well contain a Luhn-valid window)
    # Then it is not card data, alone or in a sentence
    assert not contains_card_number(iban)
    assert not contains_card_number(f"pay to {iban}, thanks")
    assert mask_card_numbers(iban) == iban


def test_the_iban_exemption_is_what_saves_a_german_iban() -> None:
    # DE89370400440532013000's 20 digits hold Luhn-valid windows ...
    assert reference_contains("DE89370400440532013000")
    # ... so with a wrong check digit it is just a long digit string, masked in logs
    assert may_contain_card_number("DE88370400440532013000")


def test_a_card_number_next_to_an_iban_is_still_found() -> None:
    assert contains_card_number(f"DE89 3704 0044 0532 0130 00 {formatted(VISA, ' ')}")
    assert contains_card_number(f"DE89370400440532013000 / {VISA}")


def test_only_ascii_digits_count() -> None:
    full_width = "".join(chr(0xFF10 + int(digit)) for digit in VISA)  # U+FF10..FF19
    assert not contains_card_number(full_width)


@st.composite
def luhn_valid_numbers(draw: st.DrawFn) -> str:
    """A Luhn-valid number whose prefix and length fit a card brand."""
    low, _, lengths = draw(st.sampled_from(REFERENCE_BRANDS))
    length = draw(st.sampled_from(sorted(lengths)))
    body = low + draw(st.text("0123456789", min_size=length - 1 - len(low), max_size=length - 1 - len(low)))
    pan = with_check_digit(body)
    assume(not reference_clabe_valid(pan))
    return pan


@st.composite
def written_card_numbers(draw: st.DrawFn) -> tuple[str, str]:
    """A Luhn-valid number as a person might write it: (digits, text as written)."""
    pan = draw(luhn_valid_numbers())
    style = draw(st.sampled_from(["plain", "fours", "random"]))
    if style == "plain":
        return pan, pan
    separator = draw(st.sampled_from(" -"))
    if style == "fours":
        return pan, formatted(pan, separator)
    cuts = draw(st.sets(st.integers(1, len(pan) - 1), max_size=6))
    pieces = [pan[a:b] for a, b in zip([0, *sorted(cuts)], [*sorted(cuts), len(pan)], strict=True)]
    return pan, separator.join(pieces)


# Text around the number; the joiners keep it from gluing digits onto the number
# (a documented blind spot: "12" + a 16-digit card is one 18-digit number).
surrounding_text = st.text(st.characters(codec="utf-8"), max_size=40)
joiners = st.sampled_from([":", ", ", "(", ")", "/", "\n", "\t", "#", "="])


@PROPERTY_SETTINGS
@given(written_card_numbers(), surrounding_text, joiners, joiners, surrounding_text)
def test_any_card_number_in_any_text_is_detected_and_masked(
    card: tuple[str, str], before: str, left: str, right: str, after: str
) -> None:
    # Given any Luhn-valid number fitting a brand, written plainly or with separators, in any text
    pan, written = card
    text = before + left + written + right + after
    # Then it is detected
    assert contains_card_number(text)
    # And once masked, no card number is left and the number's digits are gone
    masked = mask_card_numbers(text)
    assert not contains_card_number(masked)
    assert written not in masked
    assert pan not in masked.replace(" ", "").replace("-", "")
    assert len(masked) == len(text)  # masking replaces characters one for one


digit_heavy_text = st.text(st.sampled_from("0123456789      ----x."), max_size=120)


@PROPERTY_SETTINGS
@given(digit_heavy_text)
def test_detection_matches_the_documented_rule(text: str) -> None:
    # Given any text made mostly of digits and separators (no letters, so no IBAN)
    # Then the fast implementations agree with the naive references
    assert contains_card_number(text) == reference_refuses(text)
    assert may_contain_card_number(text) == reference_contains(text)
    # And whatever is refused is masked in logs too
    if contains_card_number(text):
        assert may_contain_card_number(text)


@PROPERTY_SETTINGS
@given(st.one_of(digit_heavy_text, st.text(max_size=80)))
def test_masking_is_idempotent_and_leaves_no_card_number(text: str) -> None:
    masked = mask_card_numbers(text)
    assert mask_card_numbers(masked) == masked
    assert not contains_card_number(masked)
    assert not may_contain_card_number(masked)
    assert (masked == text) == (not may_contain_card_number(text))
    # At most four digits of any masked run survive
    for run in re.findall(r"[0-9*](?:[ -]?[0-9*])*", masked):
        if "*" in run:
            assert sum(char.isdigit() for char in run) <= 4


# --- Masking -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("4111 1111 1111 1111", "**** **** **** 1111"),
        ("5555-5555-5555-4444", "****-****-****-4444"),
        ("card 378282246310005 exp", "card ***********0005 exp"),
        ("6011111111111117", "************1117"),
        ("order 12 4111111111111111", "order ** ************1111"),
        ("4111 1111 1111 1112", "4111 1111 1111 1112"),
        ("no digits here", "no digits here"),
        ("two: 4111111111111111 and 5555555555554444", "two: ************1111 and ************4444"),
    ],
)
def test_it_masks_every_digit_of_the_run_but_the_last_four(text: str, masked: str) -> None:
    assert mask_card_numbers(text) == masked


def test_masking_a_card_next_to_an_iban_masks_the_whole_run() -> None:
    # Given a card number joined to an IBAN's digits by single spaces: one run
    text = f"DE89 3704 0044 0532 0130 00 {formatted(VISA, ' ')}"
    # Then the whole run is masked (over-masking the IBAN, never under-masking the card)
    assert mask_card_numbers(text) == "DE** **** **** **** **** ** **** **** **** 1111"


def test_it_stays_fast_on_adversarial_input() -> None:
    # Given 64 KiB (the request body limit) of the worst shapes: one huge digit run
    # without any Luhn-valid window, single digits joined by spaces, many cards, many IBANs
    for text in ("1" * 65536, "1 " * 32768, (VISA + "x") * 3855, "DE89370400440532013000 " * 2850):
        started = time.perf_counter()
        mask_card_numbers(text)
        # Then the work stays linear (well under a second; ~0.1 s on a laptop)
        assert time.perf_counter() - started < 2


# --- Walking request bodies -------------------------------------------------------------------


def test_it_names_the_fields_holding_card_numbers_never_the_values() -> None:
    # Given a request body with card numbers in a few places
    body = {
        "amount": "125.50",
        "payee": {"name": f"ACME {VISA}", "account": "DE89370400440532013000"},
        "description": "March rent",
        "metadata": {"note": formatted(MASTERCARD, "-"), "ok": "fine"},
        "items": [{"memo": "x"}, {"memo": AMEX}],
    }
    # When it is searched
    # Then the paths come back in document order
    assert find_card_data(body) == ["payee.name", "metadata.note", "items[1].memo"]


def test_it_reports_a_key_holding_a_card_number_with_the_key_masked() -> None:
    found = find_card_data({"metadata": {VISA: "value", "note": "x"}})
    assert found == ["metadata.************1111"]
    assert all(not contains_card_number(path) for path in found)


def test_a_value_under_a_card_number_key_is_reported_under_the_masked_key() -> None:
    assert find_card_data({VISA: {"inner": MASTERCARD}}) == ["************1111", "************1111.inner"]


def test_it_checks_numbers_but_not_booleans() -> None:
    body = {"pan": 4111111111111111, "float": 4111111111111111.0, "flag": True, "small": 42, "none": None}
    assert find_card_data(body) == ["pan", "float"]


def test_it_reports_the_root_under_the_given_path() -> None:
    assert find_card_data(VISA) == [""]
    assert find_card_data(VISA, "body") == ["body"]
    assert find_card_data(["x", VISA], "tags") == ["tags[1]"]
    assert find_card_data({"a": "clean"}) == []


def test_it_survives_deep_nesting() -> None:
    # Given nesting deeper than Python's recursion limit
    body: object = VISA
    for _ in range(5000):
        body = {"a": [body]}
    # Then it still finds the card number
    assert len(find_card_data(body)) == 1


# --- Logging ------------------------------------------------------------------------------------


class RecordingHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def log() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger whose only handler writes to a buffer, through the masking filter."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    handler.addFilter(CardNumberMaskingFilter())
    logger = logging.getLogger("tests.card_data")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, stream
    logger.removeHandler(handler)


def test_it_masks_a_card_number_passed_as_a_log_argument(log: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = log
    # Given a card number passed as a %-argument (it only appears once formatted)
    logger.info("charging %s for %s", formatted(VISA, " "), "rent")
    # Then the log line has it masked
    assert stream.getvalue() == "INFO charging **** **** **** 1111 for rent\n"


def test_it_masks_a_card_number_in_the_message_itself(log: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = log
    logger.warning(f"body was {{'note': '{VISA}'}}")
    assert VISA not in stream.getvalue()
    assert "************1111" in stream.getvalue()


def test_it_masks_extra_fields_and_structlog_event_dicts(log: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = log
    # Given extra= data and a structlog-style record whose msg is the event dict
    capture = RecordingHandler()
    capture.addFilter(CardNumberMaskingFilter())
    logger.addHandler(capture)
    try:
        logger.info("payment", extra={"note": VISA, "nested": {"pan": [MASTERCARD]}})
        logger.info({"event": "payment", "payee": {"name": AMEX}})
    finally:
        logger.removeHandler(capture)
    # Then every value is masked, and the event dict stays a dict for the formatter
    first, second = capture.records
    assert first.note == "************1111"  # type: ignore[attr-defined]
    assert first.nested == {"pan": ["************4444"]}  # type: ignore[attr-defined]
    assert second.msg == {"event": "payment", "payee": {"name": "***********0005"}}
    assert all(pan not in stream.getvalue() for pan in TEST_PANS)


def test_it_masks_card_numbers_in_exception_tracebacks(log: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = log
    try:
        raise ValueError(f"bad card {VISA}")
    except ValueError:
        logger.exception("gateway call failed")
    output = stream.getvalue()
    assert "ValueError: bad card ************1111" in output
    assert VISA not in output


def test_it_never_leaks_through_a_broken_format_string(log: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = log
    logger.error("pan %d", VISA)  # %d with a str: formatting fails
    assert VISA not in stream.getvalue()
    assert "************1111" in stream.getvalue()


def test_it_keeps_every_record_and_is_idempotent() -> None:
    record = logging.makeLogRecord({"msg": "pan %s", "args": (VISA,)})
    masking = CardNumberMaskingFilter()
    assert masking.filter(record) is True
    assert masking.filter(record) is True
    assert record.getMessage() == "pan ************1111"
    assert record.args == ()


def test_it_masks_structlog_events_rendered_through_processor_formatter() -> None:
    # Given structlog wired to stdlib logging (no global configure), a JSON handler
    # with the masking filter, and mask_event_dict after format_exc_info
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                mask_event_dict,
                structlog.processors.JSONRenderer(),
            ]
        )
    )
    handler.addFilter(CardNumberMaskingFilter())
    stdlib_logger = logging.getLogger("tests.card_data.structlog")
    stdlib_logger.addHandler(handler)
    stdlib_logger.setLevel(logging.INFO)
    stdlib_logger.propagate = False
    log = structlog.wrap_logger(
        stdlib_logger,
        processors=[structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        wrapper_class=structlog.stdlib.BoundLogger,
    )
    try:
        # When events carry card numbers in the event, in fields, and in a traceback
        log.info(f"charge {VISA}", payee={"name": formatted(MASTERCARD, "-")})
        try:
            raise ValueError(f"bad card {AMEX}")
        except ValueError:
            log.exception("gateway call failed")
        stdlib_logger.info("foreign %s", formatted(DISCOVER, " "))
    finally:
        stdlib_logger.removeHandler(handler)
    # Then none reaches the output
    output = stream.getvalue()
    assert all(pan not in output.replace(" ", "").replace("-", "") for pan in TEST_PANS)
    assert '"event": "charge ************1111"' in output
    assert "****-****-****-4444" in output
    assert "ValueError: bad card ***********0005" in output
    assert "foreign **** **** **** 1117" in output


def test_it_accepts_uuids_whose_digit_groups_pass_luhn() -> None:
    # Given a UUID whose first three groups are all digits and form a Luhn-valid 16-digit run
    run = with_check_digit("423456781234567")
    assert contains_card_number(run)
    uuid_text = f"{run[:8]}-{run[8:12]}-{run[12:16]}-0000-abcdefabcdef"
    # When it is scanned, then it is an identifier, not a card
    assert not contains_card_number(uuid_text)
    assert not contains_card_number(f"order {uuid_text} paid")
    # But a card number next to it is still found
    assert contains_card_number(f"{uuid_text} 4111 1111 1111 1111")

"""Detect card numbers (primary account numbers) in free text: refuse them in requests, mask them in logs.

Two rules, on purpose:

* **Refusal** (:func:`contains_card_number`, :func:`find_card_data`): the contract's
  rule, as PCI data-discovery tools apply it. A card number is a sequence of whole
  digit groups (digits joined by single spaces or dashes) bounded by non-digits, whose
  length fits a card brand for its issuer prefix (:data:`CARD_BRANDS`), and that passes
  the Luhn check. A digit run of 20 or more digits without separators is never a card
  (a 20-digit Russian account ``40817810099910004312``, a 22-digit reference), nor is a
  number inside a valid IBAN, an 18-digit Mexican CLABE with a valid check digit, or
  a canonical UUID. Only request values are refused, so a false positive costs a
  user a refused payment: the rule flags what a card number looks like, nothing else.
* **Masking** (:func:`mask_card_numbers`, the log filters): the PCI-safe side, since
  masking a reference in a log line costs nothing. Any Luhn-valid 13-19 digit span of
  whole groups, and every 13-19 digit window inside a group too long to be one card
  (a card glued to its expiry date, ``41111111111111111227``), whatever its prefix.
  Everything refused is also masked (:func:`may_contain_card_number` is a superset).

How candidates are chosen
-------------------------
A *run* is a maximal stretch of digits joined by single spaces or dashes
(``"ref 030 1234-5678 x"`` has the run ``030 1234-5678``); a *group* is a stretch of
digits with no separator inside. Inside each run the candidates are:

1. every sequence of whole, consecutive groups holding 13-19 digits in total: a
   card written alone (``4111111111111111``), in groups (``4111 1111 1111 1111``)
   or next to other numbers (``order 12 4111-1111-1111-1111``, ``4111 1111 1111 1111 12/27``);
2. (masking only) inside a group of more than 19 digits, every 13-19 digit window.

Trade-offs, chosen on purpose:

* A run of 13-19 digits is checked as written, not window by window, so a
  Luhn-invalid 16-digit number is not flagged just because some 13-15 digit slice
  of it happens to pass Luhn.
* The brand table bounds false refusals: a random 13-19 digit number is refused only
  when its prefix and length fit a brand (then 1 in 10 pass Luhn). Measured rates per
  length are in ``docs/security.md``.
* Maestro cards of 12 digits are not recognised (13-19 only), nor are brands outside
  :data:`CARD_BRANDS`.
* IBANs (two letters, two check digits, 11-30 letters/digits, ISO 13616 mod-97 == 1;
  compact or in groups of four; any case) and canonical UUIDs (8-4-4-4-12 hex) are
  identifiers by their shape: a candidate wholly inside one is ignored by both rules.
* Only ASCII digits, spaces and ``-`` count (as the contract says); ``4111.1111...``
  or full-width digits are not recognised.

Work is linear in the input: the runs come from one regex pass (no backtracking
blow-up), each candidate's Luhn sum is O(1) from prefix sums, and a digit starts
at most 7 candidates (one per length 13-19).
"""

from __future__ import annotations

import logging
import re
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from itertools import accumulate, compress
from operator import not_, sub
from typing import Any

__all__ = [
    "CardNumberMaskingFilter",
    "RecordScrubbingFilter",
    "contains_card_number",
    "find_card_data",
    "mask_card_numbers",
    "mask_event_dict",
    "may_contain_card_number",
    "scrub_structure",
]

MIN_DIGITS = 13
MAX_DIGITS = 19
MASK_CHAR = "*"
KEEP_LAST = 4

# [0-9] rather than \d: in ``str`` patterns \d also matches other scripts' digits,
# which the Luhn arithmetic below cannot handle. ``{12,}`` makes runs shorter than
# 13 digits fail inside the regex engine, so ordinary text never reaches Python code.
_RUN = re.compile(r"[0-9](?:[ -]?[0-9]){12,}")
_GROUP = re.compile(r"[0-9]+")
_SEPARATORS = str.maketrans("", "", " -")

# IBAN, compact or printed in groups of four. The grouped form may swallow a
# following short word ("... 7034 from"): _iban_spans() retries shorter prefixes.
_IBAN_COMPACT = re.compile(r"(?<![A-Za-z0-9])[A-Za-z]{2}[0-9]{2}[A-Za-z0-9]{11,30}(?![A-Za-z0-9])")
_IBAN_GROUPED = re.compile(r"(?<![A-Za-z0-9])[A-Za-z]{2}[0-9]{2}(?: [A-Za-z0-9]{4}){2,7}(?: [A-Za-z0-9]{1,3})?")

# A canonical UUID (8-4-4-4-12 hex) is an identifier, never a card: its all-digit
# groups would otherwise pass Luhn for ~0.3 % of random UUIDs (order ids in metadata).
_UUID = re.compile(
    r"(?<![A-Za-z0-9-])[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}(?![A-Za-z0-9-])"
)

_DIGIT_VALUE = bytes.maketrans(b"0123456789", bytes(range(10)))
# Luhn doubling: 2*d, minus 9 when that has two digits.
_DIGIT_DOUBLED = bytes.maketrans(b"0123456789", bytes([0, 2, 4, 6, 8, 1, 3, 5, 7, 9]))


class _Luhn:
    """O(1) Luhn check of any slice of one digit string, via two prefix sums.

    Luhn leaves the rightmost digit as is and doubles every second digit leftwards,
    so which absolute positions are doubled depends only on the parity of the
    slice's last index: ``_even`` serves slices ending on an even index (even
    positions plain, odd doubled), ``_odd`` the others.
    """

    __slots__ = ("_even", "_odd")

    def __init__(self, digits: str) -> None:
        raw = digits.encode("ascii")
        plain, doubled = raw.translate(_DIGIT_VALUE), raw.translate(_DIGIT_DOUBLED)
        even = bytearray(plain)
        even[1::2] = doubled[1::2]
        odd = bytearray(doubled)
        odd[1::2] = plain[1::2]
        self._even = list(accumulate(even, initial=0))
        self._odd = list(accumulate(odd, initial=0))

    def valid(self, start: int, end: int) -> bool:
        sums = self._even if (end - 1) % 2 == 0 else self._odd
        return (sums[end] - sums[start]) % 10 == 0

    def valid_windows(self, start: int, end: int) -> Iterator[tuple[int, int]]:
        """Every Luhn-valid 13-19 digit window of ``[start, end)``, lazily, in no particular order.

        Runs at C speed (slices, ``map``, ``compress``), which matters for long
        digit strings: a run of n digits has about 7n windows.
        """
        for width in range(MIN_DIGITS, min(MAX_DIGITS, end - start) + 1):
            for parity, sums in ((0, self._odd), (1, self._even)):
                # Windows whose exclusive end has this parity all use the same prefix sums.
                first = start + ((parity - start - width) % 2)
                last = end - width  # last window start
                if first > last:
                    continue
                totals = map(sub, sums[first + width : last + width + 1 : 2], sums[first : last + 1 : 2])
                hits = map(not_, map(_MOD_10, totals))
                for window_start in compress(range(first, last + 1, 2), hits):
                    yield window_start, window_start + width


_MOD_10 = (10).__rmod__  # x -> x % 10, without a Python-level lambda


def _candidates(run: str, luhn: _Luhn) -> Iterator[tuple[int, int]]:
    """Luhn-valid candidate spans ``[start, end)`` (digit indexes) of a run; see the module doc."""
    bounds: list[int] = [0]  # digit index where each group starts, then the total
    for match in _GROUP.finditer(run):
        bounds.append(bounds[-1] + len(match.group()))
    ends = bounds[1:]
    for index, start in enumerate(bounds[:-1]):
        # Rule 1: spans of whole groups i..j whose digit count is 13..19.
        first = bisect_left(ends, start + MIN_DIGITS, lo=index)
        last = bisect_right(ends, start + MAX_DIGITS, lo=first)
        for end in ends[first:last]:
            if luhn.valid(start, end):
                yield start, end
        # Rule 2: every 13..19 window inside one group too long to be a card.
        if ends[index] - start > MAX_DIGITS:
            yield from luhn.valid_windows(start, ends[index])


# Issuer prefixes (IIN ranges, inclusive, compared on the same number of leading digits)
# and the lengths each brand issues: (brand, low, high, lengths).
_ANY_LENGTH = frozenset(range(MIN_DIGITS, MAX_DIGITS + 1))
CARD_BRANDS: tuple[tuple[str, str, str, frozenset[int]], ...] = (
    ("visa", "4", "4", frozenset({13, 16, 19})),
    ("mastercard", "51", "55", frozenset({16})),
    ("mastercard", "2221", "2720", frozenset({16})),
    ("amex", "34", "34", frozenset({15})),
    ("amex", "37", "37", frozenset({15})),
    ("discover", "6011", "6011", frozenset(range(16, 20))),
    ("discover", "644", "649", frozenset(range(16, 20))),
    ("discover", "65", "65", frozenset(range(16, 20))),
    ("jcb", "3528", "3589", frozenset(range(16, 20))),
    ("unionpay", "62", "62", frozenset(range(16, 20))),
    ("diners", "300", "305", frozenset(range(14, 20))),
    ("diners", "36", "36", frozenset(range(14, 20))),
    ("diners", "38", "39", frozenset(range(14, 20))),
    # Maestro: 50, 56-69 and Visa's 493698 (as card-type libraries do), 13-19 digits here.
    ("maestro", "493698", "493698", _ANY_LENGTH),
    ("maestro", "50", "50", _ANY_LENGTH),
    ("maestro", "56", "69", _ANY_LENGTH),
)
# For each length, the (low, high) prefix ranges that issue it.
_PREFIXES_BY_LENGTH: dict[int, tuple[tuple[str, str], ...]] = {
    length: tuple((low, high) for _, low, high, lengths in CARD_BRANDS if length in lengths)
    for length in range(MIN_DIGITS, MAX_DIGITS + 1)
}


def fits_card_brand(digits: str) -> bool:
    """True if a brand issues numbers of this length with this prefix (Luhn is not checked here)."""
    return any(low <= digits[: len(low)] <= high for low, high in _PREFIXES_BY_LENGTH.get(len(digits), ()))


# CLABE (Mexico): 18 digits, the last a check digit over weights 3, 7, 1.
_CLABE_WEIGHTS = (3, 7, 1) * 6


def clabe_valid(digits: str) -> bool:
    if len(digits) != 18 or not digits.isdigit():
        return False
    total = sum((int(d) * w) % 10 for d, w in zip(digits[:17], _CLABE_WEIGHTS, strict=False))
    return (10 - total % 10) % 10 == int(digits[17])


def _brand_candidates(run: str, digits: str, luhn: _Luhn) -> Iterator[tuple[int, int]]:
    """The refusal rule's candidate spans of a run: whole groups, fitting a brand, Luhn-valid, not a CLABE."""
    if clabe_valid(digits):
        return  # the whole run is a Mexican account number with its check digit
    bounds: list[int] = [0]
    for match in _GROUP.finditer(run):
        bounds.append(bounds[-1] + len(match.group()))
    ends = bounds[1:]
    for index, start in enumerate(bounds[:-1]):
        first = bisect_left(ends, start + MIN_DIGITS, lo=index)
        last = bisect_right(ends, start + MAX_DIGITS, lo=first)
        for end in ends[first:last]:
            candidate = digits[start:end]
            if fits_card_brand(candidate) and luhn.valid(start, end) and not clabe_valid(candidate):
                yield start, end


def _iban_spans(text: str) -> tuple[list[int], list[int]]:
    """Valid IBANs (mod-97), compact or in groups of four, and canonical UUIDs, as sorted disjoint spans."""
    spans: list[tuple[int, int]] = [match.span() for match in _UUID.finditer(text)]
    for match in _IBAN_COMPACT.finditer(text):
        if _iban_valid(match.group()):
            spans.append(match.span())
    for match in _IBAN_GROUPED.finditer(text):
        parts = match.group().split(" ")
        # Longest first; a prefix must keep at least the 15 characters of the shortest IBAN.
        for count in range(len(parts), 0, -1):
            candidate = "".join(parts[:count])
            if len(candidate) < 15:
                break
            if _iban_valid(candidate):
                spans.append((match.start(), match.start() + len(" ".join(parts[:count]))))
                break
    # Merge overlaps (the two forms can match the same text) so one bisect finds the span.
    starts: list[int] = []
    ends: list[int] = []
    for start, end in sorted(spans):
        if ends and start < ends[-1]:
            ends[-1] = max(ends[-1], end)
        else:
            starts.append(start)
            ends.append(end)
    return starts, ends


def _iban_valid(compact: str) -> bool:
    if not 15 <= len(compact) <= 34:
        return False
    rearranged = (compact[4:] + compact[:4]).upper()
    # int(c, 36) maps 0-9 to themselves and A-Z to 10-35, exactly ISO 13616's letter values.
    return int("".join(str(int(char, 36)) for char in rearranged)) % 97 == 1


class _Scanner:
    """Finds card-number runs in one text; IBAN spans are computed only when needed.

    ``strict``: the refusal rule (brand-fitting whole-group spans); otherwise the masking rule.
    """

    def __init__(self, text: str, *, strict: bool) -> None:
        self.text = text
        self.strict = strict
        self._ibans: tuple[list[int], list[int]] | None = None

    def runs_with_cards(self) -> Iterator[re.Match[str]]:
        for match in _RUN.finditer(self.text):
            if self._has_card(match):
                yield match

    def _has_card(self, match: re.Match[str]) -> bool:
        run = match.group()
        digits = run.translate(_SEPARATORS)
        luhn = _Luhn(digits)
        candidates = _brand_candidates(run, digits, luhn) if self.strict else _candidates(run, luhn)
        positions: list[int] | None = None
        for start, end in candidates:
            if self._ibans is None:
                self._ibans = _iban_spans(self.text)
            iban_starts, iban_ends = self._ibans
            if not iban_starts:
                return True
            if positions is None:
                positions = [match.start() + i for i, char in enumerate(run) if char not in " -"]
            first, last = positions[start], positions[end - 1]
            index = bisect_right(iban_starts, first) - 1
            if index < 0 or last >= iban_ends[index]:
                return True  # not wholly inside an IBAN
        return False


def contains_card_number(text: str) -> bool:
    """True if ``text`` holds a card number by the contract's rule (the refusal rule of the module doc)."""
    return any(True for _ in _Scanner(text, strict=True).runs_with_cards())


def may_contain_card_number(text: str) -> bool:
    """True if ``text`` holds a Luhn-valid 13-19 digit span of any prefix (the masking rule; a superset)."""
    return any(True for _ in _Scanner(text, strict=False).runs_with_cards())


def _mask_once(text: str) -> str:
    pieces: list[str] = []
    last_end = 0
    for match in _Scanner(text, strict=False).runs_with_cards():
        pieces.append(text[last_end : match.start()])
        pieces.append(_mask_run(match.group()))
        last_end = match.end()
    if not pieces:
        return text
    pieces.append(text[last_end:])
    return "".join(pieces)


def _mask_run(run: str) -> str:
    keep_from = sum(char.isdigit() for char in run) - KEEP_LAST
    out: list[str] = []
    seen = 0
    for char in run:
        if char in " -":
            out.append(char)
        else:
            out.append(char if seen >= keep_from else MASK_CHAR)
            seen += 1
    return "".join(out)


def mask_card_numbers(text: str) -> str:
    """Mask every run holding a card number: each digit becomes ``*`` except the run's last 4.

    Separators are kept, so ``"4111 1111 1111 1111"`` becomes ``"**** **** **** 1111"`` and
    ``"4111111111111111"`` becomes ``"************1111"``. The whole run is masked (not just
    the Luhn-valid slice) so that no leftover digits can form a new card number; the
    result satisfies neither :func:`may_contain_card_number` nor :func:`contains_card_number`,
    and masking is idempotent.
    """
    # Usually one pass. A second is needed only when masking destroyed a valid IBAN
    # whose inner digits were exempt before; every pass removes digits, so this ends.
    while True:
        masked = _mask_once(text)
        if masked == text:
            return text
        text = masked


def _number_text(value: object) -> str | None:
    """The digits a JSON number would show, or None for non-numbers (bools are not numbers here)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return format(value, "f")
    # decimal.Decimal (json parse_float=Decimal) without importing it.
    if type(value).__name__ == "Decimal":
        return format(value, "f")
    return None


def find_card_data(value: object, path: str = "") -> list[str]:
    """Paths of the strings in nested JSON-like data that contain a card number.

    Paths join object keys with ``.`` and list indexes as ``[i]``: ``payee.name``,
    ``metadata.note``, ``items[2].memo``; the root value itself is ``path`` (``""``
    by default). A dict key that holds a card number is reported too, and every path
    is built from *masked* keys, so a returned path never contains a card number.
    Numbers (not bools) are checked as their decimal digits. Order is document order,
    without duplicates. Iterative, so deep nesting cannot exhaust the stack.
    """
    found: list[str] = []
    seen: set[str] = set()

    def report(where: str) -> None:
        if where not in seen:
            seen.add(where)
            found.append(where)

    stack: list[tuple[object, str]] = [(value, path)]
    while stack:
        current, where = stack.pop()
        if isinstance(current, str):
            if contains_card_number(current):
                report(where)
        elif isinstance(current, Mapping):
            children: list[tuple[object, str]] = []
            for key, child in current.items():
                segment = key if isinstance(key, str) else str(key)
                if contains_card_number(segment):
                    segment = mask_card_numbers(segment)
                    report(f"{where}.{segment}" if where else segment)
                children.append((child, f"{where}.{segment}" if where else segment))
            stack.extend(reversed(children))
        elif isinstance(current, list | tuple):
            stack.extend((child, f"{where}[{index}]") for index, child in reversed(list(enumerate(current))))
        else:
            digits = _number_text(current)
            if digits is not None and contains_card_number(digits):
                report(where)
    return found


_MAX_DEPTH = 32


def scrub_structure(value: Any, scrub: Callable[[str], str], depth: int = 0, *, numbers: bool = False) -> Any:
    """A copy of a log payload (strings, containers, numbers) with every string, keys too, passed through ``scrub``.

    With ``numbers``, a number whose digits hold a card number becomes its masked digits. Other values are
    kept as they are. Deeper (or self-referencing) data is flattened to its scrubbed ``repr`` rather than
    walked forever. ``config.logging`` walks records with it too, to scrub secrets.
    """
    if isinstance(value, str):
        return scrub(value)
    if depth >= _MAX_DEPTH:
        return scrub(repr(value))
    if isinstance(value, dict):
        return {
            scrub_structure(k, scrub, depth + 1, numbers=numbers): scrub_structure(v, scrub, depth + 1, numbers=numbers)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        items = [scrub_structure(item, scrub, depth + 1, numbers=numbers) for item in value]
        return items if isinstance(value, list) else tuple(items)
    if numbers:
        digits = _number_text(value)
        if digits is not None and may_contain_card_number(digits):
            return mask_card_numbers(digits)
    return value


def _mask_structure(value: Any) -> Any:
    """A copy of a log payload with card numbers masked, in strings and in numbers."""
    return scrub_structure(value, mask_card_numbers, numbers=True)


def mask_event_dict(_logger: object, _method_name: str, event_dict: MutableMapping[str, Any]) -> dict[str, Any]:
    """structlog processor: mask card numbers in the final event dict.

    Put it last before the renderer (after ``format_exc_info``): a stdlib filter runs
    before ``ProcessorFormatter``'s processors, so it cannot mask what they add later,
    such as a traceback rendered from ``exc_info=True``.
    """
    masked: dict[str, Any] = _mask_structure(dict(event_dict))
    return masked


# Attributes every LogRecord has; anything else on a record came from ``extra=`` (or structlog).
_RECORD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class RecordScrubbingFilter(logging.Filter):
    """Scrub a log record in place before any handler formats it; never drops a record.

    * ``%``-style records: the message is formatted first, then scrubbed, then ``args``
      is cleared, so a value passed as an argument is caught too.
    * structlog records whose ``msg`` is the event dict (``ProcessorFormatter``):
      the dict is scrubbed value by value and stays a dict for the formatter.
    * ``extra=`` attributes, ``stack_info`` and exception text are scrubbed; an exception
      whose text :meth:`scrub_exception` rewrites is kept only as that text (``exc_text``),
      never re-rendered from ``exc_info``.

    Subclasses say what to scrub: :meth:`scrub_string`, :meth:`scrub_value`, :meth:`scrub_exception`
    and ``skip_private_extras``.
    """

    skip_private_extras = False  # leave ``extra=`` attributes named ``_…`` (structlog's own) alone

    def scrub_string(self, text: str) -> str:
        raise NotImplementedError

    def scrub_value(self, value: Any) -> Any:
        return scrub_structure(value, self.scrub_string)

    def scrub_exception(self, text: str) -> str | None:
        """The text to keep instead of the exception, or None to leave the record's exception as it is."""
        raise NotImplementedError

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, dict) and not record.args:
            record.msg = self.scrub_value(record.msg)
        else:
            try:
                message = record.getMessage()
            except Exception:  # a broken format string: logging would print msg and args raw
                message = f"{record.msg!s} (unformattable arguments: {record.args!r})"
            record.msg = self.scrub_string(message)
            record.args = ()
        for name, attribute in list(vars(record).items()):
            if name not in _RECORD_ATTRIBUTES and not (self.skip_private_extras and name.startswith("_")):
                setattr(record, name, self.scrub_value(attribute))
        if record.stack_info:
            record.stack_info = self.scrub_string(record.stack_info)
        text = record.exc_text
        if not text and record.exc_info and record.exc_info[0] is not None:
            text = logging.Formatter().formatException(record.exc_info)
        if text and (scrubbed := self.scrub_exception(text)) is not None:
            # Keeping exc_info would let the handler's formatter render it again, unscrubbed.
            record.exc_text = scrubbed
            record.exc_info = None
        return True


class CardNumberMaskingFilter(RecordScrubbingFilter):
    """Mask card numbers in a log record (message, arguments, ``extra=`` values, numbers among
    them, stack and exception text) before any handler formats it; never drops a record.

    An exception is replaced by its masked text only when its text holds a card number.
    Attach it to every handler (``"filters": [...]`` in LOGGING): logger-level
    filters do not see records propagated from child loggers. It is idempotent,
    so a record passing two filtered handlers is fine.
    """

    def scrub_string(self, text: str) -> str:
        return mask_card_numbers(text)

    def scrub_value(self, value: Any) -> Any:
        return _mask_structure(value)

    def scrub_exception(self, text: str) -> str | None:
        return mask_card_numbers(text) if may_contain_card_number(text) else None

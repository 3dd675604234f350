"""PII and secret detectors: a regular expression finds candidates, a validator confirms them.

Validation is what keeps code intact: IP addresses must parse (``ipaddress``) and be globally routable
(loopback, private, documentation and reserved ranges are not personal) and must not read as a version
("version 1.2.3.4", "v1.2.3.4", "==1.2.3.4"); phone numbers must be valid numbers (``phonenumbers``,
Google's libphonenumber metadata); card numbers must pass the Luhn check with a known issuer prefix and
consistent grouping. Secrets are in ``secrets.py``.

Every pattern starts with a literal or a character class and checks what precedes it with a
look-behind placed after that first character: Python's ``re`` then skips ahead to candidate characters
instead of trying the whole pattern at every position (5-40x faster on source code).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import phonenumbers

from lmforge.data.pii.secrets import find_secrets

# Kinds in priority order: where two spans overlap, the earlier kind wins.
KINDS = ("private_key", "aws_key", "github_token", "email", "credit_card", "phone", "ipv6", "ipv4", "secret")
PLACEHOLDERS = {kind: f"<{kind.upper()}>" for kind in KINDS}
Span = tuple[int, int, str]  # (start, end, kind)


@dataclass(frozen=True)
class Detector:
    kind: str
    pattern: re.Pattern
    trigger: str | None = None  # a substring every match contains: texts without it are skipped
    validate: Callable[[re.Match, str], bool] | None = None


_PRIVATE_KEY = re.compile(
    r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----"
    r"(?:[\s\S]*?-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----|(?:(?:\\n|\s)+[A-Za-z0-9+/=:-]{8,})+)")
_AWS_KEY = re.compile(r"A(?<![A-Z0-9]A)(?:KIA|SIA|BIA|CCA|GPA|IDA|IPA|NPA|NVA|ROA|PKA|SCA)[A-Z0-9]{16}(?![A-Z0-9])")
_GITHUB_TOKEN = re.compile(
    r"g(?<![A-Za-z0-9_]g)(?:h[pousr]_[A-Za-z0-9]{36,251}|ithub_pat_[A-Za-z0-9_]{60,251})(?![A-Za-z0-9_])")
_EMAIL = re.compile(
    r"(?<![\w.%+-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+"
    r"[A-Za-z]{2,24}(?![\w-])")
_CARD = re.compile(  # 4-4-4-(1..7) or Amex/Diners 4-6-(4..5), separators a space, a dash or nothing
    r"[2-6](?<![\w.+-][2-6])(?:\d{3}([ -]?)\d{4}\1\d{4}\1\d{1,7}|\d{3}([ -]?)\d{6}\2\d{4,5})(?![\w-]|\.\d)")
_PHONE_PLUS = re.compile(  # +1 415 555 0132, +44 20 7946 0958, +49-30-901820
    r"\+(?<![\w+]\+)\d{1,3}(?:[ .-]?\(?\d{1,5}\)?){2,5}(?![\w-]|\.\d)")
_PHONE_NANP = re.compile(  # (415) 555-0132, 415-555-0132, 415.555.0132, 1-415-555-0132
    r"[(\d](?<![\w+.-][(\d])(?:(?<=\()\d{3}\) ?|(?<=1)[ .-](?:\(\d{3}\) ?|\d{3}[ .-])|(?<=\d)\d\d[ .-])"
    r"\d{3}[ .-]\d{4}(?![\w-]|\.\d)")
_IPV4 = re.compile(r"\d(?<![\w.]\d)\d{0,2}\.\d{1,3}\.\d{1,3}\.\d{1,3}(?![\w]|\.\d)")
_IPV6_ANY = re.compile(
    r"[0-9A-Fa-f:](?<![\w:.][0-9A-Fa-f:])[0-9A-Fa-f]{0,3}:(?:[0-9A-Fa-f]{0,4}:){1,6}"
    r"(?:[0-9A-Fa-f]{1,4}|(?:\d{1,3}\.){3}\d{1,3})?(?![\w:]|\.\w)")
# Global unicast (2000::/3) addresses begin with a four-digit group from 2000 to 3fff.
_IPV6_GLOBAL = re.compile(
    r"[23](?<![\w:.][23])[0-9A-Fa-f]{3}:(?:[0-9A-Fa-f]{0,4}:){1,6}"
    r"(?:[0-9A-Fa-f]{1,4}|(?:\d{1,3}\.){3}\d{1,3})?(?![\w:]|\.\w)")
# A dotted quad right after one of these is a version or a section number, not an address.
_VERSION_BEFORE = re.compile(
    r"(?:version\w*|ver\.?|release|build|python|section|sections|rfc\s?\d*|§|chapter|[=<>~!]=|[<>]|\bv)\W{0,4}$")
_DECIMAL = re.compile(r"\+?\d+\.\d+")


def _version_context(text: str, start: int) -> bool:
    """Whether the number at ``start`` follows a version marker on its line ("version 1.2.3.4", "==")."""
    line_start = text.rfind("\n", 0, start) + 1
    return bool(_VERSION_BEFORE.search(text[max(line_start, start - 24):start].lower()))


def _valid_ip(match: re.Match, text: str, *, global_only: bool) -> bool:
    try:
        address = ipaddress.ip_address(match.group(0))
    except ValueError:
        return False
    if global_only and (not address.is_global or address.is_multicast):
        return False
    return address.version == 6 or not _version_context(text, match.start())


def _valid_phone(match: re.Match, text: str) -> bool:
    candidate = match.group(0)
    if _DECIMAL.fullmatch(candidate):
        return False  # +35236450.6 is a number
    try:
        number = phonenumbers.parse(candidate, "US")
    except phonenumbers.NumberParseException:
        return False
    return phonenumbers.is_valid_number(number)


def luhn_valid(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def card_issuer(digits: str) -> str | None:
    """The card network of a number by its issuer prefix and length, or None."""
    n, two, three, four = len(digits), int(digits[:2]), int(digits[:3]), int(digits[:4])
    if digits[0] == "4" and n in (13, 16, 19):
        return "visa"
    if (51 <= two <= 55 or 2221 <= four <= 2720) and n == 16:
        return "mastercard"
    if two in (34, 37) and n == 15:
        return "amex"
    if (four == 6011 or 644 <= three <= 649 or two in (62, 65)) and 16 <= n <= 19:
        return "discover/unionpay"
    if 3528 <= four <= 3589 and 16 <= n <= 19:
        return "jcb"
    if (300 <= three <= 305 or two in (36, 38, 39)) and 14 <= n <= 19:
        return "diners"
    return None


def _valid_card(match: re.Match, text: str) -> bool:
    digits = match.group(0).replace(" ", "").replace("-", "")
    return 13 <= len(digits) <= 19 and card_issuer(digits) is not None and luhn_valid(digits)


def build_detectors(kinds: list[str], *, ip_global_only: bool) -> list[Detector]:
    """The regex detectors of ``kinds`` (all but "email" and "secret", found by their own scans)."""
    ip = {"global_only": ip_global_only}
    table = {
        "private_key": [Detector("private_key", _PRIVATE_KEY, trigger="PRIVATE KEY")],
        "aws_key": [Detector("aws_key", _AWS_KEY)],
        "github_token": [Detector("github_token", _GITHUB_TOKEN)],
        "credit_card": [Detector("credit_card", _CARD, validate=_valid_card)],
        "phone": [Detector("phone", _PHONE_PLUS, trigger="+", validate=_valid_phone),
                  Detector("phone", _PHONE_NANP, validate=_valid_phone)],
        "ipv6": [Detector("ipv6", _IPV6_GLOBAL if ip_global_only else _IPV6_ANY, trigger=":",
                          validate=lambda m, t: _valid_ip(m, t, **ip))],
        "ipv4": [Detector("ipv4", _IPV4, trigger=".", validate=lambda m, t: _valid_ip(m, t, **ip))],
    }
    return [d for kind in KINDS if kind in kinds for d in table.get(kind, [])]


def find_emails(text: str) -> Iterator[Span]:
    """E-mail addresses, matched only around each "@" (a whole-text regex scan is ~50x slower)."""
    at = text.find("@")
    end = -1
    while at >= 0:
        if at >= end:
            lo = max(0, at - 64, text.rfind("\n", 0, at) + 1)
            match = _EMAIL.search(text, lo, min(len(text), at + 256))
            if match is not None and match.start() <= at < match.end():
                end = match.end()
                yield match.start(), match.end(), "email"
        at = text.find("@", at + 1)


def find_spans(text: str, detectors: list[Detector], *, emails: bool = False,
               secrets: dict | None = None) -> Iterator[Span]:
    """Confirmed spans, possibly overlapping: regex detectors, then e-mails and secrets if asked for."""
    for detector in detectors:
        if detector.trigger is not None and detector.trigger not in text:
            continue
        for match in detector.pattern.finditer(text):
            if detector.validate is None or detector.validate(match, text):
                yield match.start(), match.end(), detector.kind
    if emails:
        yield from find_emails(text)
    if secrets is not None:
        yield from find_secrets(text, **secrets)

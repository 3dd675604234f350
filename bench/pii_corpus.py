"""A seeded synthetic PII set planted into real text (standard library files), and decoys that look like
PII but are ordinary code: version strings, hex colours, hashes, UUIDs, dates, OIDs, MAC addresses.

    text, spans = plant(host_text, random.Random(0), per_kind=4)
    planted, found, false = measure(PiiConfig(), seed=0, hosts=texts, per_kind=4)
"""

from __future__ import annotations

import base64
import ipaddress
import random
import string
from collections import Counter

import phonenumbers

from lmforge.data.pii.config import PiiConfig
from lmforge.data.pii.detectors import card_issuer, luhn_valid
from lmforge.data.pii.step import detect

B62 = string.ascii_letters + string.digits


def _token(rng: random.Random, alphabet: str, n: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def email(rng):
    first = rng.choice(["jane", "john", "a.smith", "mike_o", "li.wei", "ana-maria", "k9", "support", "dev+ci"])
    domain = rng.choice(["example", "mail", "corp-net", "univ", "gmail", "acme", "data-lab"])
    tld = rng.choice(["com", "org", "net", "io", "de", "co.uk", "edu", "fr"])
    return f"{first}{rng.randint(1, 999)}@{domain}.{tld}"


def ipv4(rng):
    while True:
        address = ipaddress.IPv4Address(rng.getrandbits(32))
        if address.is_global and not address.is_multicast:  # a personal address: routable, one host
            return str(address)


def ipv6(rng):
    while True:
        address = ipaddress.IPv6Address((0x2000 + rng.getrandbits(13) << 112) | rng.getrandbits(112))
        if address.is_global:
            return address.exploded if rng.random() < 0.3 else str(address)


_PHONE_FORMATS = [phonenumbers.PhoneNumberFormat.NATIONAL, phonenumbers.PhoneNumberFormat.INTERNATIONAL,
                  phonenumbers.PhoneNumberFormat.E164]


def phone(rng):
    region = rng.choice(["US", "US", "US", "CA", "GB", "DE", "FR", "IN", "AU", "JP", "BR"])
    while True:
        number = phonenumbers.example_number_for_type(region, rng.choice(
            [phonenumbers.PhoneNumberType.MOBILE, phonenumbers.PhoneNumberType.FIXED_LINE]))
        digits = str(number.national_number)
        digits = digits[:-4] + "".join(rng.choice(string.digits) for _ in range(4))
        candidate = phonenumbers.parse(f"+{number.country_code}{digits}")
        if phonenumbers.is_valid_number(candidate):
            break
    if region in ("US", "CA"):
        text = phonenumbers.format_number(candidate, rng.choice(_PHONE_FORMATS))
        return rng.choice([text, text.replace("(", "").replace(") ", "-"), text.replace("(", "").replace(") ", ".")
                           .replace("-", ".")]) if text.startswith("(") else text
    return phonenumbers.format_number(candidate, rng.choice(_PHONE_FORMATS[1:]))  # abroad: with the country code


def credit_card(rng):
    while True:
        prefix, length = rng.choice([("4", 16), ("51", 16), ("55", 16), ("2221", 16), ("34", 15), ("37", 15),
                                     ("6011", 16), ("65", 16), ("3530", 16), ("36", 14)])
        body = prefix + "".join(rng.choice(string.digits) for _ in range(length - len(prefix) - 1))
        for check in string.digits:
            if luhn_valid(body + check):
                number = body + check
                break
        if card_issuer(number):
            break
    sep = rng.choice(["", " ", "-"])
    groups = [number[:4], number[4:10], number[10:]] if length == 15 else [number[i:i + 4] for i in range(0, length, 4)]
    return sep.join(groups) if length != 14 else number


def aws_key(rng):
    return rng.choice(["AKIA", "ASIA"]) + _token(rng, string.ascii_uppercase + string.digits, 16)


def github_token(rng):
    return rng.choice(["ghp_", "gho_", "ghs_", "ghu_"]) + _token(rng, B62, 36)


def private_key(rng):
    kind = rng.choice(["RSA ", "EC ", "OPENSSH ", ""])
    body = base64.b64encode(rng.randbytes(rng.randint(300, 900))).decode()
    lines = [body[i:i + 64] for i in range(0, len(body), 64)]
    return f"-----BEGIN {kind}PRIVATE KEY-----\n" + "\n".join(lines) + f"\n-----END {kind}PRIVATE KEY-----"


def secret(rng):
    return rng.choice([
        lambda: _token(rng, B62, rng.randint(32, 48)),  # generic API key
        lambda: _token(rng, B62 + "+/", 40),  # AWS secret access key
        lambda: "sk_live_" + _token(rng, B62, rng.randint(24, 32)),  # Stripe
        lambda: "AIza" + _token(rng, B62 + "_-", 35),  # Google API key
        lambda: "xoxb-" + _token(rng, string.digits, 12) + "-" + _token(rng, B62, 24),  # Slack
        lambda: _token(rng, "0123456789abcdef", 40),  # a hex key (only caught after a secret keyword)
    ])()


KINDS = {"email": email, "ipv4": ipv4, "ipv6": ipv6, "phone": phone, "credit_card": credit_card, "aws_key": aws_key,
         "github_token": github_token, "private_key": private_key, "secret": secret}

# Lines a value is planted in; {x} is the value.
CONTEXTS = {
    "email": ['# Author: Jane Doe <{x}>', '    "email": "{x}",', 'Please write to {x} for details.',
              '__maintainer__ = "{x}"'],
    "ipv4": ['    host = "{x}"', 'Server listening on {x}:8080.', '# connect to {x} first', 'ALLOWED = ["{x}"]'],
    "ipv6": ['    host = "{x}"', 'Listening on [{x}]:443', '# peer {x}', 'addr = ("{x}", 80)'],
    "phone": ['Call us at {x}.', '    "phone": "{x}",', '# on-call: {x}', 'TEL = "{x}"'],
    "credit_card": ['    card_number = "{x}"', 'Charged card {x} today.', '# test card {x}', 'pan={x}'],
    "aws_key": ['AWS_ACCESS_KEY_ID = "{x}"', '    key_id="{x}",', '# {x}', 'export AWS_ACCESS_KEY_ID={x}'],
    "github_token": ['GITHUB_TOKEN = "{x}"', 'git clone https://{x}@github.com/org/repo', '# token: {x}',
                     '    "token": "{x}",'],
    "private_key": ['KEY = """{x}"""', '{x}'],
    "secret": ['API_KEY = "{x}"', '    "client_secret": "{x}",', 'Authorization: Bearer {x}',
               'url = "https://api.example.com/v1?access_token={x}"', 'password = \'{x}\'', 'export SECRET_KEY={x}'],
}

# Ordinary code that must not be replaced.
DECOYS = [
    '__version__ = "1.2.3.4"', 'VERSION = (3, 11, 7)', 'python_requires=">=3.11.7"', 'version="10.0.19041.1"',
    'install_requires=["numpy==1.26.4.1"]', "    release = 'v2.7.0.40'", 'color = "#ff8800"', 'border: 1px solid #FFF;',
    'background = "#1e1e2e"', 'expected = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"',
    '    sha1 = "2fd4e1c67a2d28fced849ee1bb76e7391b93eb12"', 'md5 = "d41d8cd98f00b204e9800998ecf8427e"',
    'RUN_ID = "123e4567-e89b-12d3-a456-426614174000"', 'uid = uuid.UUID("a8098c1a-f86e-11da-bd1a-00112444be1e")',
    'date = "2023-10-05"', 'when = "12:30:45"', 'oid = "1.3.6.1.4.1.311.21.8"', 'mac = "00:1a:2b:3c:4d:5e"',
    'isbn = "978-3-16-148410-0"', 'x = 1234567890123', 'big = 340282366920938463463374607431768211456',
    'pi = 3.14159265358979', 'ratio = 0.123456789012', 'evens = values[::2]', 'mid = data[1::3]',
    'encoded = "SGVsbG8sIFdvcmxkISBIb3cgYXJlIHlvdT8="', 'manager = HTTPPasswordMgrWithPriorAuth()',
    'handler = HTTPDigestAuthHandler(password_mgr)', 'path = "/usr/lib/python3.11/site-packages/foo"',
    'url = "https://docs.python.org/3/library/ipaddress.html"', '@functools.lru_cache(maxsize=128)',
    'result = a @ b', 'zip_code = "94105-1234"', 'timeout = 30.0', 'port = 8080', 'ZERO = "0.0.0.0"',
    'LOCAL = "127.0.0.1"', 'PRIVATE = "192.168.1.10"', 'DOC_NET = "2001:db8::1"', 'loop = "::1"',
    'key = "some_long_identifier_name_here"', 'token_type = "BearerTokenAuthentication"',
    'build = "20231005.1234"', 'see section 8.2.4.44 of the spec', 'serial = "0000-0000-0000-0000"',
]


def plant(host: str, rng: random.Random, per_kind: int) -> tuple[str, list[tuple[int, int, str]]]:
    """``host`` with ``per_kind`` values of each kind and every decoy inserted at random line breaks;
    returns the text and the (start, end, kind) of each planted value (kind "decoy" for decoys)."""
    lines = host.split("\n")
    items = [(kind, rng.choice(CONTEXTS[kind]), KINDS[kind](rng)) for kind in KINDS for _ in range(per_kind)]
    items += [("decoy", decoy, decoy) for decoy in DECOYS]
    rng.shuffle(items)
    slots = sorted(rng.randrange(len(lines) + 1) for _ in items)
    out, spans, position, line_index = [], [], 0, 0
    for (kind, context, value), slot in zip(items, slots):
        while line_index < slot:
            out.append(lines[line_index] + "\n")
            position += len(out[-1])
            line_index += 1
        line = context.replace("{x}", value) + "\n"
        start = position + line.index(value)
        spans.append((start, start + len(value), kind))
        out.append(line)
        position += len(line)
    out.append("\n".join(lines[line_index:]))
    return "".join(out), spans


def measure(cfg: PiiConfig, seed: int, hosts: list[str], per_kind: int) -> tuple[Counter, Counter, Counter]:
    """Per kind: planted, found (the exact planted span, as that kind) and false detections.

    A detection neither planted nor found in the host text before planting is false (decoys included);
    detections already in the host text are real text of unknown truth and are left out of the count.
    """
    rng = random.Random(seed)
    planted, found, false = Counter(), Counter(), Counter()
    for host in hosts:
        baseline = Counter(host[s:e] for s, e, _ in detect(host, cfg))
        text, spans = plant(host, rng, per_kind)
        truth = {(s, e): k for s, e, k in spans}
        planted.update(k for _, _, k in spans if k != "decoy")
        for start, end, kind in detect(text, cfg):
            if truth.get((start, end)) == kind:
                found[kind] += 1
            elif baseline[text[start:end]] > 0:
                baseline[text[start:end]] -= 1
            else:
                false[kind] += 1
    return planted, found, false

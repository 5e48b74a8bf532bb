"""PII scrubbing: e-mail addresses, phone numbers, Chinese resident ID numbers, bank card
numbers and IP addresses become typed placeholders (<EMAIL>, <PHONE>, <ID_CARD>, <BANK_CARD>,
<IP>), counted per type.

Numbers are matched only with the shape of the real thing and, where one exists, its check
digit (ID numbers: GB 11643 mod-11 checksum and a plausible birth date; bank cards: Luhn, a known
network prefix and 4-digit grouping), so years, dates, prices and plain counts stay untouched.
Digits run into CJK text ("手机13812345678") are still found: the edges test for ASCII letters
and digits, not word boundaries.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable

# edges: no ASCII letter/digit (or the given extra characters) right before or after
_B, _A = r"(?<![0-9A-Za-z])", r"(?![0-9A-Za-z])"

EMAIL = re.compile(r"(?<![0-9A-Za-z._%+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,}" + _A)
IPV4 = re.compile(r"(?<![0-9A-Za-z.])(?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}"
                  r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(?![0-9A-Za-z]|\.[0-9])")
IPV6 = re.compile(r"(?<![0-9A-Za-z:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![0-9A-Za-z:])")
ID_CARD = re.compile(_B + r"[1-9][0-9]{5}(?:18|19|20)[0-9]{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12][0-9]|3[01])"
                     r"[0-9]{3}[0-9Xx]" + _A)
BANK_CARD = re.compile(r"(?<![0-9A-Za-z.,-])[2-6][0-9]{3}(?:[ -]?[0-9]){9,15}(?![0-9A-Za-z]|[.,-][0-9])")
PHONES = (
    # Chinese mobile: 1[3-9]x xxxx xxxx, optional +86 / 0086, optional space or dash separators
    re.compile(r"(?<![0-9A-Za-z+])(?:(?:\+|00)86[ -]?)?1[3-9][0-9](?:[ -]?[0-9]{4}){2}" + _A),
    # Chinese landline with area code: 010-12345678, (021) 1234 5678
    re.compile(_B + r"(?:\(0[1-9][0-9]{1,2}\) ?|0[1-9][0-9]{1,2}-)[0-9]{3,4}[ -]?[0-9]{4}" + _A),
    # North American: (555) 123-4567, 555-123-4567, 555.123.4567, +1 555 123 4567, 1-800-555-1234
    re.compile(r"(?<![0-9A-Za-z+(])(?:(?:\+?1[ .-])?\([2-9][0-9]{2}\) ?[0-9]{3}[ .-][0-9]{4}"
               r"|(?:\+?1([.-]))?[2-9][0-9]{2}([.-])[0-9]{3}\2[0-9]{4}|\+1 [2-9][0-9]{2} [0-9]{3} [0-9]{4})"
               r"(?![0-9A-Za-z]|[.-][0-9])"),
    # other international numbers written with a leading +country code: +44 20 7946 0958
    re.compile(r"(?<![0-9A-Za-z+])\+[2-9][0-9]{0,2}(?:[ .-]?\(?[0-9]{1,4}\)?){2,5}(?![0-9A-Za-z]|[.-][0-9])"),
)
_AT, _DOTTED, _COLONS = re.compile("@"), re.compile(r"[0-9]\.[0-9]"), re.compile(r"[0-9A-Fa-f]?:[0-9A-Fa-f]*:")
_DIGIT_RUN = re.compile(r"[0-9]{3}")
_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"


def id_card_valid(number: str) -> bool:
    """A Chinese 18-character resident ID number with a correct mod-11 check character."""
    if len(number) != 18 or not number[:17].isdigit():
        return False
    total = sum(int(d) * w for d, w in zip(number[:17], _ID_WEIGHTS))
    return _ID_CHECK[total % 11] == number[17].upper()


def luhn_valid(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


# (leading digits, lengths) of the card networks: Visa, Mastercard, Amex, Diners, JCB,
# Discover and UnionPay / Chinese banks' own ranges
_NETWORKS = (("4", (13, 16, 19)), (("51", "52", "53", "54", "55", "22", "23", "24", "25", "26", "27"), (16,)),
             (("34", "37"), (15,)), (("30", "36", "38"), (14, 16)), ("35", (16, 17, 18, 19)),
             (("60", "62", "64", "65"), (16, 17, 18, 19)))


def _network_ok(digits: str) -> bool:
    return any(digits.startswith(prefix) and len(digits) in lengths for prefix, lengths in _NETWORKS)


def bank_card_valid(match: str) -> bool:
    """A known card network's prefix and length, passing Luhn; separators, if any, one kind and in groups of four (the last
    group may be shorter) or the 4-6-5 / 4-6-4 layout of 15/14-digit cards."""
    digits = re.sub(r"[ -]", "", match)
    if not _network_ok(digits) or not luhn_valid(digits):
        return False
    seps = set(re.findall(r"[ -]", match))
    if not seps:
        return True
    if len(seps) > 1:
        return False
    groups = [len(g) for g in re.split(r"[ -]", match)]
    return (all(g == 4 for g in groups[:-1]) and 1 <= groups[-1] <= 4) or groups in ([4, 6, 5], [4, 6, 4])


def _phone_valid(match: str) -> bool:
    return 7 <= sum(ch.isdigit() for ch in match) <= 15


def _ipv6_valid(match: str) -> bool:
    if "::" not in match and match.count(":") != 7:
        return False
    try:
        ipaddress.IPv6Address(match)
    except ValueError:
        return False
    return True


class PiiScrubber:
    """``scrub(text) -> (text, {type: count})`` for the PII ``types`` chosen."""

    def __init__(self, types: list[str]) -> None:
        # (type, pattern, validator, a cheap test a text must pass for the pattern to be tried)
        rules: list[tuple[str, re.Pattern, Callable[[str], bool] | None, re.Pattern]] = [
            ("EMAIL", EMAIL, None, _AT), ("IP", IPV4, None, _DOTTED), ("IP", IPV6, _ipv6_valid, _COLONS),
            ("ID_CARD", ID_CARD, id_card_valid, _DIGIT_RUN), ("BANK_CARD", BANK_CARD, bank_card_valid, _DIGIT_RUN),
            *(("PHONE", p, _phone_valid, _DIGIT_RUN) for p in PHONES)]
        self.rules = [r for r in rules if r[0] in types]

    def scrub(self, text: str) -> tuple[str, dict[str, int]]:
        counts: dict[str, int] = {}
        for kind, pattern, valid, prefilter in self.rules:
            if prefilter.search(text) is None:
                continue

            def replace(m: re.Match, kind=kind, valid=valid) -> str:
                if valid is not None and not valid(m.group(0)):
                    return m.group(0)
                counts[kind] = counts.get(kind, 0) + 1
                return f"<{kind}>"

            text = pattern.sub(replace, text)
        return text, counts

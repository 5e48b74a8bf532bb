"""PII scrubbing: each type found in English and Chinese text, with check digits validated,
and ordinary numbers (dates, years, prices, counts, versions, times) left alone."""

from __future__ import annotations

import pytest

from lightseek.data.pipeline.config import PII_TYPES
from lightseek.data.pipeline.pii import PiiScrubber, bank_card_valid, id_card_valid, luhn_valid

SCRUB = PiiScrubber(list(PII_TYPES))


@pytest.mark.parametrize("text, expected", [
    ("Write to jane.doe+news@example.co.uk today.", "Write to <EMAIL> today."),
    ("请发邮件到zhang_san@mail.example.cn联系我。", "请发邮件到<EMAIL>联系我。"),
    ("手机13812345678，或者 138 1234 5678。", "手机<PHONE>，或者 <PHONE>。"),
    ("电话：+86 139-1234-5678", "电话：<PHONE>"),
    ("座机010-12345678或(021) 1234 5678", "座机<PHONE>或<PHONE>"),
    ("Call (555) 123-4567, 555-123-4567 or 555.123.4567.", "Call <PHONE>, <PHONE> or <PHONE>."),
    ("Toll free 1-800-555-1234; abroad +1 555 123 4567.", "Toll free <PHONE>; abroad <PHONE>."),
    ("London office: +44 20 7946 0958.", "London office: <PHONE>."),
    ("身份证号码11010519491231002X已登记", "身份证号码<ID_CARD>已登记"),
    ("Card 4111 1111 1111 1111 or 4111-1111-1111-1111.", "Card <BANK_CARD> or <BANK_CARD>."),
    ("银行卡号6228480402564890018，Amex 3782 822463 10005", "银行卡号<BANK_CARD>，Amex <BANK_CARD>"),
    ("Server 192.168.1.10 and 2001:db8::8a2e:370:7334 are down.", "Server <IP> and <IP> are down."),
    ("服务器地址是10.0.0.1。", "服务器地址是<IP>。"),
])
def test_pii_is_replaced(text, expected):
    assert SCRUB.scrub(text)[0] == expected


@pytest.mark.parametrize("text", [
    "On 2023-12-29 the board met; the 1999-2001 figures were revised.",
    "2023年12月29日，价格为¥12,800.00元，同比增长3.5%。",
    "The house sold for $1,234,567.89 in 1987, up from $950,000.",
    "Population 1,400,000,000; order number 20231229123456; ISBN 9780306406157.",
    "Version 1.2.3 shipped at 10:30:45; pi is 3.14159; std::vector is a template.",
    "Invalid ID 110105194912310021 and card 4111 1111 1111 1112 stay.",
    "Numbers 12345678901 and 999.1.1.1 and 300 200 1000 are not PII.",
    "第十二条 自2021年1月1日起施行，共计1234条。",
    "Email me at name at example dot com; user@localhost is local.",
])
def test_ordinary_numbers_are_kept(text):
    out, counts = SCRUB.scrub(text)
    assert out == text and counts == {}


def test_counts_per_type_and_type_selection():
    text = "a@b.com c@d.org 13812345678 192.168.0.1 11010519491231002X"
    out, counts = SCRUB.scrub(text)
    assert counts == {"EMAIL": 2, "PHONE": 1, "IP": 1, "ID_CARD": 1}
    out, counts = PiiScrubber(["EMAIL"]).scrub(text)
    assert counts == {"EMAIL": 2} and "13812345678" in out


def test_check_digits():
    assert id_card_valid("11010519491231002X") and id_card_valid("11010519491231002x")
    assert not id_card_valid("110105194912310021")
    assert luhn_valid("4111111111111111") and not luhn_valid("4111111111111112")
    assert bank_card_valid("4111 1111 1111 1111") and not bank_card_valid("41 1111 1111 1111 111")
    assert not bank_card_valid("4111 1111-1111 1111")  # mixed separators

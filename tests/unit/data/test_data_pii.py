import sys
from collections import Counter
from pathlib import Path

import pytest

from stdlib_samples import stdlib_sample
from lmforge.data.document import Document
from lmforge.data.pii.config import ALL_KINDS, PiiConfig
from lmforge.data.pii.step import PiiScrubber, detect, scrub

sys.path.insert(0, str(Path(__file__).parents[3] / "bench"))  # the benchmark's planted set, smaller
from pii_corpus import DECOYS, KINDS, measure  # noqa: E402

CFG = PiiConfig()


def test_planted_pii_recall_and_precision_per_kind():
    hosts = stdlib_sample(40, seed=3, max_chars=20_000)
    planted, found, false = measure(CFG, seed=7, hosts=hosts, per_kind=4)  # 160 of each kind
    report = {k: (found[k], planted[k], false[k]) for k in KINDS}
    for kind in KINDS:
        assert planted[kind] == 160
        assert found[kind] / planted[kind] >= 0.99, report
        assert found[kind] / (found[kind] + false[kind]) >= 0.95, report


def test_ordinary_code_is_not_mangled():
    assert detect("\n".join(DECOYS), CFG) == []


def test_typed_placeholders_and_counts():
    text = ("mail jane@example.com or call (415) 555-2671, card 4111 1111 1111 1111 from 8.8.8.8 "
            "and 2607:f8b0:4005:80a::200e; AWS_KEY=AKIAIOSFODNN7EXAMPLE token ghp_" + "a1B2" * 9 + "\n"
            "API_KEY = 'q8Xz2LmP0vR7tY4wK9sD3fG6hJ1nB5cV'\n"
            "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA0Z3VS5JJcds3xfn\n-----END RSA PRIVATE KEY-----\n")
    out, counts = scrub(text, CFG)
    assert out == ("mail <EMAIL> or call <PHONE>, card <CREDIT_CARD> from <IPV4> and <IPV6>; AWS_KEY=<AWS_KEY> "
                   "token <GITHUB_TOKEN>\nAPI_KEY = '<SECRET>'\n<PRIVATE_KEY>\n")
    assert counts == {k: 1 for k in ALL_KINDS}


@pytest.mark.parametrize("text", [
    "4111 1111 1111 1112",  # Luhn fails
    "1234-5678-9012-3456",  # no issuer has prefix 12
    "4111 1111-1111 1111",  # mixed separators
    "call 123-456-7890",  # area codes do not start with 1
    "127.0.0.1 10.0.0.1 192.168.0.1 0.0.0.0 255.255.255.255 224.0.0.1",  # not globally routable
    "version 8.8.8.8", "v1.2.3.4", "numpy==1.2.3.4", "1.2.3.4.5", "999.1.1.1",
])
def test_lookalikes_are_kept(text):
    assert scrub(text, CFG) == (text, Counter())


def test_kinds_and_ip_scope_are_configurable():
    text = "a@b.org from 10.1.2.3 and 8.8.4.4"
    assert scrub(text, PiiConfig(kinds=["ipv4"]))[0] == "a@b.org from 10.1.2.3 and <IPV4>"
    assert scrub(text, PiiConfig(ip_global_only=False))[0] == "<EMAIL> from <IPV4> and <IPV4>"
    step = PiiScrubber(PiiConfig(kinds=["email"]))
    out = list(step([Document("d", text, "t"), Document("e", "nothing here", "t")]))
    assert [d.text for d in out] == ["<EMAIL> from 10.1.2.3 and 8.8.4.4", "nothing here"]
    assert (step.stats.changed, dict(step.stats.counts)) == (1, {"email": 1})

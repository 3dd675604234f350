"""The curate stage's warning when the filters drop most of the corpus: the fraction, the top reasons with their
counts, and recipe keys that exist."""

import re

from lmforge.data.config import DataConfig
from lmforge.data.stage import WARN_DROP_FRACTION, drop_reasons, drop_warning


def stats(read: int, steps: dict[str, dict[str, int]]) -> dict:
    return {"documents_read": read, "steps": [{"name": name, "dropped": dropped} for name, dropped in steps.items()]}


DATA = DataConfig(sources=[{"kind": "text", "path": "corpus"}])
MOSTLY_DROPPED = stats(5000, {
    "normalize": {},
    "length": {"too_short": 400, "blank": 10},
    "quality": {"gopher_quality:min_doc_words": 3000, "fineweb:line_punct_thr": 1200, "c4:filter_curly_bracket": 190},
    "dedup_exact": {"duplicate": 100},
})  # 4,900 of 5,000 dropped


def test_reasons_are_counted_over_every_step():
    assert drop_reasons(MOSTLY_DROPPED) == {"length:too_short": 400, "length:blank": 10,
                                            "gopher_quality:min_doc_words": 3000, "fineweb:line_punct_thr": 1200,
                                            "c4:filter_curly_bracket": 190, "duplicate": 100}


def test_the_warning_names_the_fraction_the_top_three_reasons_and_the_keys_to_change():
    assert WARN_DROP_FRACTION == 0.9
    assert drop_warning(MOSTLY_DROPPED, DATA, WARN_DROP_FRACTION) == (
        "curate: the filters dropped 98.0% of the documents (4,900 of 5,000 read), more than 90%; top reasons: "
        "gopher_quality:min_doc_words 3,000, fineweb:line_punct_thr 1,200, length:too_short 400; to keep more: "
        "if the documents are code, or prose, say so with data.sources[0].content: code | prose (the code rule set "
        "judges code, the prose ones prose); loosen data.quality.gopher_quality.min_doc_words (now 50; null "
        "switches it off); loosen data.quality.fineweb.line_punct_thr (now 0.12; null switches it off); "
        "data.quality.fineweb.apply_to: none or data.quality.gopher_quality.apply_to: none switches those rule "
        "sets off; data.min_chars (now 32)")


def test_every_key_the_warning_names_is_a_recipe_key():
    many = stats(100, {"length": {"too_long": 20}, "quality": {"c4:filter_curly_bracket": 30,
                                                               "gopher_repetition:top_n_grams": 25},
                       "dedup_minhash": {"near_duplicate": 21}})
    two_sources = DataConfig(sources=[{"kind": "text", "path": "a"}, {"kind": "python-stdlib"}])
    for data, case in ((DATA, MOSTLY_DROPPED), (two_sources, many)):
        message = drop_warning(case, data, 0.5)
        keys = re.findall(r"data\.[a-z_\[\]0-9i.]+[a-z_]", message)
        assert keys
        for key in keys:
            node = data
            for part in key.removeprefix("data.").replace("[i]", "[0]").split("."):
                name, _, index = part.partition("[")
                node = getattr(node, name)
                if index:
                    node = node[int(index.rstrip("]"))]
    message = drop_warning(many, two_sources, 0.5)
    assert "data.sources[i].content: code | prose" in message
    assert "loosen data.quality.c4.filter_curly_bracket (now true; false switches it off)" in message
    assert "top reasons: c4:filter_curly_bracket 30, gopher_repetition:top_n_grams 25, near_duplicate 21;" in message
    assert "length:too_long" not in message  # the fourth reason


def test_no_warning_at_or_below_the_threshold():
    assert drop_warning(stats(1000, {"quality": {"code:max_line_length": 900}}), DATA, 0.9) is None
    assert drop_warning(stats(1000, {"quality": {"code:max_line_length": 901}}), DATA, 0.9) is not None
    assert drop_warning(stats(1000, {"quality": {"code:max_line_length": 901}}), DATA, 0.95) is None
    assert drop_warning(stats(0, {}), DATA, 0.9) is None

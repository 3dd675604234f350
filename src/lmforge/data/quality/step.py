"""The quality step: runs each enabled rule set on the documents it applies to (prose or code)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from lmforge.data.document import Document
from lmforge.data.quality.code import code_rules
from lmforge.data.quality.config import QualityConfig
from lmforge.data.quality.prose import c4, fineweb, gopher_quality, gopher_repetition
from lmforge.data.streaming import Step

# In datatrove's FineWeb order; the code rules run on their own documents.
RULE_SETS: dict[str, Callable] = {
    "gopher_repetition": gopher_repetition,
    "gopher_quality": gopher_quality,
    "c4": c4,
    "fineweb": fineweb,
    "code": code_rules,
}


def _applies(apply_to: str, is_code: bool) -> bool:
    return apply_to == "all" or apply_to == ("code" if is_code else "prose")


class QualityFilter(Step):
    """Drop a document at the first rule it fails; the reason is ``<rule set>:<rule>``."""

    name = "quality"

    def __init__(self, cfg: QualityConfig) -> None:
        super().__init__()
        sets = [(getattr(cfg, name), rules) for name, rules in RULE_SETS.items()]
        self.for_code = [(c, rules) for c, rules in sets if _applies(c.apply_to, True)]
        self.for_prose = [(c, rules) for c, rules in sets if _applies(c.apply_to, False)]

    @property
    def active(self) -> bool:
        return bool(self.for_code or self.for_prose)

    def process(self, doc: Document) -> Document | str:
        text = doc.text
        for cfg, rules in self.for_code if doc.is_code else self.for_prose:
            reason, text = rules(text, cfg)
            if reason is not None:
                return reason
        return doc if text is doc.text else dataclasses.replace(doc, text=text)

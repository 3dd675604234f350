"""``data.pii``: which kinds of personal data and secrets are replaced by typed placeholders."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from lmforge.core.config import StrictModel

PiiKind = Literal["private_key", "aws_key", "github_token", "email", "credit_card", "phone", "ipv6", "ipv4", "secret"]
ALL_KINDS: list[PiiKind] = ["private_key", "aws_key", "github_token", "email", "credit_card", "phone", "ipv6",
                            "ipv4", "secret"]


class PiiConfig(StrictModel):
    enabled: bool = True
    kinds: list[PiiKind] = Field(default_factory=lambda: list(ALL_KINDS))
    # Only globally routable addresses are personal: loopback, private, documentation and reserved ranges
    # (127.0.0.1, 192.168.x.x, 2001:db8::) are kept.
    ip_global_only: bool = True
    # High-entropy tokens ("secret") with no secret keyword before them (api_key=, token:, Bearer, ...)
    # must be at least this long, with at least this many bits of entropy per character.
    secret_min_length: int = Field(default=32, ge=16, le=1000)
    secret_min_entropy: float = Field(default=4.0, ge=0, le=8)

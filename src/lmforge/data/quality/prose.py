"""Prose rule sets: Gopher quality, Gopher repetition, C4 and FineWeb, following datatrove's filters.

Each takes the text and its config and returns ``(reason, text)``: ``reason`` is None to keep the
document (C4 may return it with lines removed), else ``"<rule set>:<rule>"``, the key that dropped it.
"""

from __future__ import annotations

import re

from lmforge.data.quality.config import C4Config, FineWebConfig, GopherQualityConfig, GopherRepetitionConfig
from lmforge.data.quality.words import (
    duplicated_n_gram_chars,
    find_duplicates,
    is_symbol_word,
    split_words,
    top_n_gram_chars,
)

Verdict = tuple[str | None, str]

_PARAGRAPHS = re.compile(r"\n{2,}")
_LINES = re.compile(r"\n+")
_CITATION = re.compile(r"\[\d*]|\[edit]|\[citation needed]")
_C4_END_PUNCTUATION = (".", "?", "!", '"', "'")
_POLICY = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies")
# Sentence ends for counting C4 sentences (hand-written: nltk's punkt needs a model download).
_SENTENCE_END = re.compile(r"[.!?]+[\"')\]]*(?=\s|$)")
# Lines ending in one of these count as ending in punctuation (FineWeb); a subset of datatrove's list.
TERMINAL_PUNCTUATION = (
    ".", "!", "?", "。", "！", "？", "…", "؟", "।", "॥", "‼", "‽", "⁇", "⁈", "⁉", ":", ";", '"', "'", "”", "’", ")",
)


def gopher_quality(text: str, cfg: GopherQualityConfig) -> Verdict:
    words = split_words(text)
    n_words = len(words)
    if n_words == 0:
        return "gopher_quality:min_doc_words", text
    real_words = [w for w in words if not is_symbol_word(w)]
    n_real = len(real_words)
    if cfg.min_doc_words is not None and n_real < cfg.min_doc_words:
        return "gopher_quality:min_doc_words", text
    if cfg.max_doc_words is not None and n_real > cfg.max_doc_words:
        return "gopher_quality:max_doc_words", text
    mean_length = sum(map(len, real_words)) / n_real if n_real else 0.0
    if cfg.min_avg_word_length is not None and mean_length < cfg.min_avg_word_length:
        return "gopher_quality:min_avg_word_length", text
    if cfg.max_avg_word_length is not None and mean_length > cfg.max_avg_word_length:
        return "gopher_quality:max_avg_word_length", text
    if cfg.max_symbol_word_ratio is not None:
        if text.count("#") / n_words > cfg.max_symbol_word_ratio:
            return "gopher_quality:max_symbol_word_ratio", text
        if (text.count("...") + text.count("…")) / n_words > cfg.max_symbol_word_ratio:
            return "gopher_quality:max_symbol_word_ratio", text
    lines = text.splitlines() or [text]
    if cfg.max_bullet_lines_ratio is not None:
        bullets = sum(line.lstrip().startswith(("•", "-")) for line in lines)
        if bullets / len(lines) > cfg.max_bullet_lines_ratio:
            return "gopher_quality:max_bullet_lines_ratio", text
    if cfg.max_ellipsis_lines_ratio is not None:
        ellipses = sum(line.rstrip().endswith(("...", "…")) for line in lines)
        if ellipses / len(lines) > cfg.max_ellipsis_lines_ratio:
            return "gopher_quality:max_ellipsis_lines_ratio", text
    if cfg.min_alpha_words_ratio is not None:
        alpha = sum(any(c.isalpha() for c in w) for w in words)
        if alpha / n_words < cfg.min_alpha_words_ratio:
            return "gopher_quality:min_alpha_words_ratio", text
    if cfg.min_stop_words is not None:
        stop_words = set(cfg.stop_words)
        if sum(w in stop_words for w in words) < cfg.min_stop_words:
            return "gopher_quality:min_stop_words", text
    return None, text


def gopher_repetition(text: str, cfg: GopherRepetitionConfig) -> Verdict:
    if not text:
        return None, text
    paragraphs = _PARAGRAPHS.split(text.strip())
    count, chars = find_duplicates(paragraphs)
    if cfg.dup_para_frac is not None and count / len(paragraphs) > cfg.dup_para_frac:
        return "gopher_repetition:dup_para_frac", text
    if cfg.dup_para_char_frac is not None and chars / len(text) > cfg.dup_para_char_frac:
        return "gopher_repetition:dup_para_char_frac", text
    lines = _LINES.split(text)
    count, chars = find_duplicates(lines)
    if cfg.dup_line_frac is not None and count / len(lines) > cfg.dup_line_frac:
        return "gopher_repetition:dup_line_frac", text
    if cfg.dup_line_char_frac is not None and chars / len(text) > cfg.dup_line_char_frac:
        return "gopher_repetition:dup_line_char_frac", text
    words = split_words(text)
    for n, fraction in cfg.top_n_grams.items():
        if top_n_gram_chars(words, n) / len(text) > fraction:
            return "gopher_repetition:top_n_grams", text
    for n, fraction in cfg.dup_n_grams.items():
        if duplicated_n_gram_chars(words, n) / len(text) > fraction:
            return "gopher_repetition:dup_n_grams", text
    return None, text


def c4(text: str, cfg: C4Config) -> Verdict:
    """Keep lines that look like sentences; drop the document if lorem ipsum or code, or too few sentences."""
    sentences = 0
    kept = []
    for line in text.splitlines():
        line = line.strip()
        words = line.split()
        if cfg.max_word_length is not None and any(len(w) > cfg.max_word_length for w in words):
            continue
        if cfg.remove_citations:
            line = _CITATION.sub("", line)
        if cfg.filter_no_terminal_punct and (not line.endswith(_C4_END_PUNCTUATION) or line.endswith("...")):
            continue
        if cfg.min_words_per_line is not None and len(words) < cfg.min_words_per_line:
            continue
        lower = line.lower()
        if cfg.filter_lorem_ipsum and "lorem ipsum" in lower:
            return "c4:filter_lorem_ipsum", text
        if cfg.filter_javascript and "javascript" in lower:
            continue
        if cfg.filter_curly_bracket and "{" in line:
            return "c4:filter_curly_bracket", text
        if cfg.filter_policy and any(p in lower for p in _POLICY):
            continue
        sentences += max(1, len(_SENTENCE_END.findall(line)))
        kept.append(line)
    if cfg.min_num_sentences is not None and sentences < cfg.min_num_sentences:
        return "c4:min_num_sentences", text
    new_text = "\n".join(kept).strip()
    return None, (text if new_text == text else new_text)


def fineweb(text: str, cfg: FineWebConfig) -> Verdict:
    lines = [line for line in text.split("\n") if line.strip()]
    if not lines:
        return "fineweb:empty", text
    if cfg.line_punct_thr is not None:
        ratio = sum(line.endswith(TERMINAL_PUNCTUATION) for line in lines) / len(lines)
        if ratio < cfg.line_punct_thr and not (ratio == 0 and cfg.line_punct_exclude_zero):
            return "fineweb:line_punct_thr", text
    if cfg.short_line_thr is not None:
        ratio = sum(len(line) <= cfg.short_line_length for line in lines) / len(lines)
        if ratio > cfg.short_line_thr:
            return "fineweb:short_line_thr", text
    if cfg.char_duplicates_ratio is not None:
        chars = len(text) - text.count("\n")
        if chars and find_duplicates(lines)[1] / chars > cfg.char_duplicates_ratio:
            return "fineweb:char_duplicates_ratio", text
    if cfg.new_line_ratio is not None:
        n_words = len(split_words(text))
        if n_words and text.count("\n") / n_words > cfg.new_line_ratio:
            return "fineweb:new_line_ratio", text
    return None, text

"""The data stage: read sources, clean and filter, split, train a tokenizer, pack token shards.

    stats = curate(data_cfg, seed, run / "data")               # train.jsonl, val.jsonl, stats.json
    train_tokenizer(tok_cfg, run / "data/train.jsonl", run / "tokenizer.json")
    pack_tokens(run / "tokenizer.json", run / "data/train.jsonl", run / "tokens/train", pack_cfg)
    shards = TokenShards(run / "tokens/train"); x = shards.window(0, seq_len)

Curation runs these steps, each configured in the recipe's ``data:`` section: normalize, strip_control,
length, quality (Gopher, C4, FineWeb rules for prose; code rules for code), pii (typed placeholders), then
across the corpus dedup_exact and dedup_minhash (MinHash LSH), the train/val split, augment (training
split only) and, for a numeric table, tabular cleaning (``data/tabular/``, ``apply_scaler`` at eval time).
"""

from lmforge.data.config import DataConfig, MinHashConfig, PackConfig, SourceConfig, TokenizerConfig
from lmforge.data.curate import curate
from lmforge.data.document import Document
from lmforge.data.packing import TokenShards, pack_tokens
from lmforge.data.readers import SourceStats, read_source
from lmforge.data.steps import Step, StepStats, build_steps
from lmforge.data.tabular.transform import apply_scaler
from lmforge.data.tokenizer import EOS_TOKEN, load_tokenizer, train_tokenizer

__all__ = [
    "EOS_TOKEN",
    "DataConfig",
    "Document",
    "MinHashConfig",
    "PackConfig",
    "SourceConfig",
    "SourceStats",
    "Step",
    "StepStats",
    "TokenShards",
    "TokenizerConfig",
    "apply_scaler",
    "build_steps",
    "curate",
    "load_tokenizer",
    "pack_tokens",
    "read_source",
    "train_tokenizer",
]

"""lmforge: curate data, train a tokenizer, pretrain, evaluate and sample a language model."""

__version__ = "0.1.0"

"""Small random models and tokenizers on both sides of the Hugging Face boundary, made locally (nothing is
downloaded): an lmforge checkpoint inside a run-like folder with its BPE tokenizer, and transformers models
built with ``from_config`` and saved with ``save_pretrained``."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers
from tokenizers import pre_tokenizers, trainers

from lmforge.checkpoint.formats import save_checkpoint
from lmforge.core.atomic import atomic_write_text
from lmforge.data.tokenizer import EOS_TOKEN, new_tokenizer
from lmforge.model.config import ModelDims
from lmforge.model.decoder import Decoder
from lmforge.rundir import RunDir

# weights of this scale give logits of 2-5, whose fp32 rounding (lmforge fp32 against itself in fp64: 1e-6 to
# 4e-6) stays below the 1e-5 bound; at twice the scale rounding alone exceeds it, whatever the mapping
NOISE = 0.1
TEXTS = ["The cat sat on the mat. The dog sat on the log.", "def add(a, b):\n    return a + b\n",
         "Question: what is two plus two? Answer: four.", "the quick brown fox jumps over the lazy dog"] * 5

# (tied, n_heads, n_kv_heads, n_layers, vocab): tied and untied, MHA and GQA (down to one kv head), odd vocabularies
SHAPES = [(True, 4, 2, 2, 97), (False, 4, 4, 2, 101), (True, 8, 1, 3, 333), (False, 2, 1, 1, 1009)]
SHAPE_IDS = ["tied-gqa-97", "untied-mha-101", "tied-1kv-333", "untied-1kv-1009"]


def make_tokenizer(vocab_size: int = 300):
    tokenizer = new_tokenizer()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS_TOKEN], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(TEXTS, trainer)
    return tokenizer


def lmforge_dims(tied, heads, kv_heads, layers, vocab, context=64) -> ModelDims:
    return ModelDims(vocab_size=vocab, d_model=16 * heads, n_layers=layers, n_heads=heads, n_kv_heads=kv_heads,
                     ffn_hidden=40, context_length=context, rope_theta=5000.0, norm_eps=1e-6, tie_embeddings=tied)


def lmforge_run(root: Path, dims: ModelDims, seed: int = 0) -> tuple[Path, Decoder]:
    """A run-like folder: ``tokenizer/tokenizer.json`` and one checkpoint of a random decoder (weights far from
    the init's ones and zeros, so that every parameter matters)."""
    torch.manual_seed(seed)
    model = Decoder(dims)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * NOISE)
    run = RunDir(root)
    atomic_write_text(run.tokenizer, make_tokenizer(min(dims.vocab_size, 300)).to_str())
    checkpoint = run.checkpoint(3)
    save_checkpoint(checkpoint, model, None, {"step": 3, "resume_key": {"model": dims.to_dict(), "seq_len": 32}})
    return checkpoint, model.eval()


def hf_folder(path: Path, tied, heads, kv_heads, layers, vocab, *, model_type: str = "llama", seed: int = 0,
              max_shard_size: str | None = None, **config) -> transformers.PreTrainedModel:
    """A random transformers model saved with ``save_pretrained`` (with a BPE tokenizer beside it)."""
    classes = {"llama": transformers.LlamaConfig, "mistral": transformers.MistralConfig}
    options = dict(vocab_size=vocab, hidden_size=16 * heads, intermediate_size=40, num_hidden_layers=layers,
                   num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=64,
                   tie_word_embeddings=tied, rms_norm_eps=1e-6, initializer_range=0.1,
                   rope_parameters={"rope_type": "default", "rope_theta": 5000.0}, bos_token_id=None, eos_token_id=0)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(classes[model_type](**{**options, **config})).eval()
    model.save_pretrained(path, **({} if max_shard_size is None else {"max_shard_size": max_shard_size}))
    transformers.PreTrainedTokenizerFast(tokenizer_object=make_tokenizer(), eos_token=EOS_TOKEN).save_pretrained(path)
    return model


def token_ids(vocab: int, batch: int = 2, length: int = 40) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(7))

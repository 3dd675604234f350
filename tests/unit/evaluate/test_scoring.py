import copy

import pytest
import torch
from tokenizers import pre_tokenizers, trainers

from lmforge.data.tokenizer import EOS_ID, EOS_TOKEN, new_tokenizer
from lmforge.errors import LmforgeError
from lmforge.evaluate.scoring import (WIDTH_STEP, Score, encode_pair, greedy_continuations, loglikelihoods,
                                      rolling_loglikelihood, rolling_windows, score_token_pairs)
from lmforge.model.config import SIZES, ModelDims
from lmforge.model.decoder import Decoder
from lmforge.model.generate import generate

CONTEXT_LENGTH = 64
TEXTS = ["The cat sat on the mat. The dog sat on the log.", "def add(a, b):\n    return a + b\n",
         "Question: what is two plus two? Answer: four.", "the quick brown fox jumps over the lazy dog"] * 5


def make_tokenizer():
    tok = new_tokenizer()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=[EOS_TOKEN], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(TEXTS, trainer)
    assert tok.token_to_id(EOS_TOKEN) == EOS_ID
    return tok


def make_model(tokenizer):
    torch.manual_seed(0)
    # a larger init than training uses: peaked, varied predictions make argmax and sums meaningful
    dims = ModelDims(vocab_size=tokenizer.get_vocab_size(),
                     **{**SIZES["debug"], "context_length": CONTEXT_LENGTH, "init_std": 0.3})
    return Decoder(dims).eval()


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer):
    return make_model(tokenizer)


def enc(tokenizer, text):
    return tokenizer.encode(text, add_special_tokens=False).ids


def plain_score(model, context_ids, continuation_ids):
    """One forward of context + continuation (left-truncated to the model), log_softmax summed at the
    continuation positions."""
    tokens = (context_ids + continuation_ids)[-(model.dims.context_length + 1):][:-1]
    with torch.no_grad():
        logits = model(torch.tensor([tokens]))[0]
        logprobs = (logits if logits.dtype == torch.float64 else logits.float()).log_softmax(-1)
    n = len(continuation_ids)
    rows = logprobs[len(tokens) - n:]
    target = torch.tensor(continuation_ids)
    return Score(float(rows[torch.arange(n), target].double().sum()), n,
                 bool((rows.argmax(-1) == target).all()))


REQUESTS = [
    ("The cat sat on the", " mat."),
    ("The cat sat on the", " log."),                # same context, other choice
    ("The cat sat on the", " mat. The dog"),        # extends the first choice: shares its forward
    ("Question: what is two plus two? Answer:", " four."),
    ("Question: what is two plus two? Answer:", " five."),
    ("Question: what is two plus two? Answer:", " A"),
    ("Question: what is two plus two? Answer:", " A"),   # identical request
    ("def add(a, b):\n", "    return a + b"),
    ("", "the quick brown fox"),                    # empty context: end-of-text token before it
    ("x", "y"),
    ("  ", "the cat"),                              # whitespace only: it moves, the context is end-of-text
    ("the quick brown fox jumps over the lazy", " dog and the cat"),
    ("The cat", " sat on the mat. The"),           # read off a row whose context is shared, before that context
]


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-9), (torch.float32, 1e-5)])
def test_scores_equal_plain_per_request_loop(model, tokenizer, dtype, tolerance):
    """fp64 checks the indexing exactly; in fp32 a padded batch or a shared longer forward differs from a
    lone forward by rounding (measured: up to 7e-6 on sums of -10 to -60)."""
    model = copy.deepcopy(model).to(dtype)
    scores = loglikelihoods(model, tokenizer, REQUESTS, batch_size=4, device="cpu")
    assert len(scores) == len(REQUESTS)
    for (context, continuation), score in zip(REQUESTS, scores):
        context_ids, continuation_ids = encode_pair(tokenizer, context, continuation)
        ref = plain_score(model, context_ids, continuation_ids)
        assert score.n_tokens == ref.n_tokens == len(continuation_ids)
        assert score.logprob == pytest.approx(ref.logprob, abs=tolerance)
        assert score.is_greedy == ref.is_greedy
    assert scores[8].n_tokens == len(enc(tokenizer, "the quick brown fox"))
    assert encode_pair(tokenizer, "  ", "the cat") == ([EOS_ID], enc(tokenizer, "  the cat"))
    assert scores[5] == scores[6]


def test_batch_size_does_not_change_scores(model, tokenizer):
    one = loglikelihoods(model, tokenizer, REQUESTS, batch_size=1)
    eight = loglikelihoods(model, tokenizer, REQUESTS, batch_size=8)
    for a, b in zip(one, eight):
        assert a.logprob == pytest.approx(b.logprob, abs=1e-5)
        assert (a.n_tokens, a.is_greedy) == (b.n_tokens, b.is_greedy)


def test_shared_context_runs_once(model, tokenizer):
    model = copy.deepcopy(model).double()
    context = "Question: what is two plus two? The cat sat on the mat. Answer:"
    requests = [(context, choice) for choice in (" four.", " the dog sat", " five or six", " mat")]
    positions = []
    hook = model.embed_tokens.register_forward_hook(lambda module, args, out: positions.append(args[0].numel()))
    try:
        shared = score_token_pairs(model, [encode_pair(tokenizer, *r) for r in requests], batch_size=8)
        shared_positions, positions[:] = sum(positions), []
        separate = score_token_pairs(model, [encode_pair(tokenizer, *r) for r in requests], batch_size=8,
                                     share_context=False)
        separate_positions = sum(positions)
    finally:
        hook.remove()
    context_len = len(enc(tokenizer, context))
    own = [len(encode_pair(tokenizer, *r)[1]) - 1 for r in requests]  # each input's tokens past the context
    # " mat" is one token: its input is the context alone, read off another row; three rows remain
    assert sorted(own)[0] == 0
    assert separate_positions == 3 * (context_len + max(own))
    packed = context_len + sum(own)  # one packed row: the context ran once, padded to a multiple of WIDTH_STEP
    assert shared_positions == -(-packed // WIDTH_STEP) * WIDTH_STEP < separate_positions
    for (context_ids, continuation_ids), a, b in zip([encode_pair(tokenizer, *r) for r in requests], shared, separate):
        ref = plain_score(model, context_ids, continuation_ids)
        assert a.logprob == pytest.approx(ref.logprob, abs=1e-9) and b.logprob == pytest.approx(ref.logprob, abs=1e-9)
        assert a.is_greedy == b.is_greedy == ref.is_greedy


def test_is_greedy_true_for_the_greedy_continuation(model, tokenizer):
    context_ids = enc(tokenizer, "The cat sat")
    greedy_ids = generate(model, context_ids, 5, temperature=0.0)
    other = [(greedy_ids[0] + 1) % model.dims.vocab_size] + greedy_ids[1:]
    greedy, not_greedy = score_token_pairs(model, [(context_ids, greedy_ids), (context_ids, other)])
    assert greedy.is_greedy and not not_greedy.is_greedy
    assert greedy.logprob > not_greedy.logprob


def test_encode_pair_moves_trailing_space_of_context(model, tokenizer):
    context_ids, continuation_ids = encode_pair(tokenizer, "The cat sat on the ", "mat")
    whole = enc(tokenizer, "The cat sat on the mat")
    assert context_ids == enc(tokenizer, "The cat sat on the")
    assert continuation_ids == whole[len(context_ids):]
    assert context_ids + continuation_ids == whole
    assert tokenizer.decode(continuation_ids) == " mat"
    # encoding the context as given would end on a lone space token that the whole string never has
    naive = enc(tokenizer, "The cat sat on the ")
    assert whole[:len(naive)] != naive
    [score] = loglikelihoods(model, tokenizer, [("The cat sat on the ", "mat")])
    # fp32: a packed, masked forward rounds differently from the plain causal one (the fp64 tests bound it at 1e-9)
    assert score.logprob == pytest.approx(plain_score(model, context_ids, continuation_ids).logprob, abs=1e-5)


def test_left_truncation_keeps_the_continuation(model, tokenizer):
    context = " ".join(TEXTS[:6])
    continuation = " The dog sat on the log."
    context_ids, continuation_ids = encode_pair(tokenizer, context, continuation)
    assert len(context_ids) + len(continuation_ids) > CONTEXT_LENGTH + 1
    [score] = loglikelihoods(model, tokenizer, [(context, continuation)])
    truncated = (context_ids + continuation_ids)[-(CONTEXT_LENGTH + 1):]
    ref = plain_score(model, truncated[:-len(continuation_ids)], continuation_ids)
    assert score.n_tokens == len(continuation_ids)
    assert score.logprob == pytest.approx(ref.logprob, abs=1e-6)
    # several choices after one long context: each truncated to fit, scored as the plain loop does
    choices = [" The dog sat on the log.", " four.", " the mat", " the mat"]
    scores = loglikelihoods(model, tokenizer, [(context, c) for c in choices], batch_size=2)
    for c, s in zip(choices, scores):
        ids = encode_pair(tokenizer, context, c)
        assert s.logprob == pytest.approx(plain_score(model, *ids).logprob, abs=1e-5)
    # a continuation of exactly the context length still fits (one context token before it)
    long_ids = (enc(tokenizer, context) * 2)[:CONTEXT_LENGTH]
    [full] = score_token_pairs(model, [([EOS_ID], long_ids)])
    assert full.logprob == pytest.approx(plain_score(model, [EOS_ID], long_ids).logprob, abs=1e-5)


def reference_rolling_terms(model, token_ids, window, prefix_id=EOS_ID):
    """Token by token: log P(token i | the last min(i + 1, window) tokens of [prefix] + tokens[:i])."""
    seq = [prefix_id] + list(token_ids)
    terms = []
    with torch.no_grad():
        for i, token in enumerate(token_ids):
            context = seq[max(0, i + 1 - window):i + 1]
            logits = model(torch.tensor([context]))[0, -1]
            logprobs = (logits if logits.dtype == torch.float64 else logits.float()).log_softmax(-1)
            terms.append(float(logprobs[token]))
    return terms


# fp32: a sum of 50 log-probabilities near -457, computed in windows of different lengths (one ulp there is 3e-5)
@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-9), (torch.float32, 1e-4)])
def test_rolling_loglikelihood_longest_context(model, tokenizer, dtype, tolerance):
    model = copy.deepcopy(model).to(dtype)
    token_ids = enc(tokenizer, " ".join(TEXTS[:3]))[:50]
    assert len(token_ids) == 50
    terms = reference_rolling_terms(model, token_ids, window=16)
    result = rolling_loglikelihood(model, token_ids, 16, "cpu", batch_size=8)
    assert result.n_tokens == len(token_ids)
    assert result.logprob == pytest.approx(sum(terms), abs=tolerance)
    # every token predicted exactly once, whatever the stride
    for stride in (1, 5, 16):
        predicted = [t for _, pred in rolling_windows(token_ids, EOS_ID, 16, stride) for t in pred]
        assert predicted == token_ids
    assert rolling_loglikelihood(model, [], 16) == (0.0, 0)


def lm_eval_windows(token_list, prefix_token, max_seq_len, context_len):
    """lm-eval's get_rolling_token_windows followed by make_disjoint_window, written out as lm-eval has it."""
    pred_len = max_seq_len - context_len + 1
    predicted = 0
    first_seq_len = min(max_seq_len, len(token_list))
    out = [([prefix_token] + token_list[:first_seq_len - 1], token_list[:first_seq_len])]
    predicted += first_seq_len
    while predicted < len(token_list):
        window_pred_len = min(len(token_list) - predicted, pred_len)
        window_end = predicted + window_pred_len
        out.append((token_list[window_end - max_seq_len - 1:window_end - 1],
                    token_list[window_end - window_pred_len:window_end]))
        predicted += window_pred_len
    return [(a[:len(a) - (len(b) - 1)], b) for a, b in out]


def test_rolling_windows_match_lm_eval(model, tokenizer):
    token_ids = enc(tokenizer, " ".join(TEXTS[:3]))[:50]
    for stride in (1, 4, 16):
        assert rolling_windows(token_ids, EOS_ID, 16, stride) == lm_eval_windows(token_ids, EOS_ID, 16, 16 - stride + 1)
    # stride = window is lm-eval's default loglikelihood_rolling (context_len=1): the sum over its windows
    windows = lm_eval_windows(token_ids, EOS_ID, 16, 1)
    expected = sum(plain_score(model, a, b).logprob for a, b in windows)  # the model reads <= 16 tokens
    assert rolling_loglikelihood(model, token_ids, 16, stride=16).logprob == pytest.approx(expected, abs=1e-5)


def test_greedy_continuations_cut_at_stop(model, tokenizer):
    prompts = ["The cat sat", "def add(a, b):"]
    full = greedy_continuations(model, tokenizer, prompts, max_new_tokens=12)
    for prompt, text in zip(prompts, full):
        assert text == tokenizer.decode(generate(model, enc(tokenizer, prompt), 12, temperature=0.0, eos_id=EOS_ID))
    stop = full[0][3:5]
    assert len(stop) == 2
    first = full[0].find(stop)
    cut = greedy_continuations(model, tokenizer, prompts[:1], max_new_tokens=12, stop=[" never-there", stop])
    assert cut == [full[0][:first]]
    assert greedy_continuations(model, tokenizer, prompts[:1], 12, stop=full[0][0]) == [""]
    # a prompt longer than the context is truncated from the left to leave room for the new tokens
    [long] = greedy_continuations(model, tokenizer, [" ".join(TEXTS)], max_new_tokens=4)
    assert isinstance(long, str)


def test_clear_errors(model, tokenizer):
    with pytest.raises(LmforgeError, match="empty continuation"):
        loglikelihoods(model, tokenizer, [("The cat", "")])
    long_continuation = " ".join(TEXTS[:8])
    assert len(enc(tokenizer, long_continuation)) > CONTEXT_LENGTH
    with pytest.raises(LmforgeError, match="longer than the context length 64"):
        loglikelihoods(model, tokenizer, [("The cat", " sat"), ("The cat", long_continuation)])
    with pytest.raises(LmforgeError, match="context_length"):
        rolling_loglikelihood(model, [1, 2, 3], CONTEXT_LENGTH + 1)
    with pytest.raises(LmforgeError, match="stride"):
        rolling_loglikelihood(model, [1, 2, 3], 16, stride=17)
    with pytest.raises(LmforgeError, match="batch_size"):
        loglikelihoods(model, tokenizer, [("a", "b")], batch_size=0)

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from babybitnet.bigram import (
    BigramLanguageModel,
    bigram_nll,
    bigram_probs,
    count_bigrams,
    sample_bigrams,
)
from babybitnet.data import CharTokenizer, get_batch
from babybitnet.train import TrainConfig, train

TEXT = "abab. ba. aab."  # small enough to count by hand


def test_counts_by_hand():
    # "abba": pairs ab, bb, ba
    c = count_bigrams(torch.tensor([0, 1, 1, 0]), 3)
    assert c.dtype == torch.long and c.shape == (3, 3)
    assert c.tolist() == [[0, 1, 0], [1, 1, 0], [0, 0, 0]]
    assert count_bigrams(torch.tensor([2]), 3).sum() == 0  # one token: no pair
    assert count_bigrams(torch.tensor([], dtype=torch.long), 3).sum() == 0  # empty: no pair


@settings(max_examples=40, deadline=None)
@given(ids=st.lists(st.integers(0, 6), max_size=60))
def test_counts_equal_a_python_loop(ids):
    expected = torch.zeros(7, 7, dtype=torch.long)
    for a, b in zip(ids, ids[1:], strict=False):
        expected[a, b] += 1
    got = count_bigrams(torch.tensor(ids, dtype=torch.long), 7)
    assert torch.equal(got, expected)
    assert got.sum() == max(len(ids) - 1, 0)


def test_counts_reject_bad_input():
    with pytest.raises(ValueError, match="1-D"):
        count_bigrams(torch.zeros(2, 3, dtype=torch.long), 3)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        count_bigrams(torch.tensor([0, 3]), 3)
    with pytest.raises(ValueError, match="integer"):
        count_bigrams(torch.tensor([0.0, 1.0]), 3)


def test_probs_by_hand_and_rows_sum_to_one():
    counts = torch.tensor([[0, 3], [1, 1]])
    assert bigram_probs(counts, k=0).tolist() == [[0.0, 1.0], [0.5, 0.5]]
    torch.testing.assert_close(bigram_probs(counts, k=1), torch.tensor([[0.2, 0.8], [0.5, 0.5]]))
    # a row never seen gets the uniform distribution (the limit of add-k as k -> 0)
    assert bigram_probs(torch.tensor([[0, 0], [2, 0]]), k=0).tolist() == [[0.5, 0.5], [1.0, 0.0]]
    with pytest.raises(ValueError, match="k must be >= 0"):
        bigram_probs(counts, k=-1)


@settings(max_examples=30, deadline=None)
@given(ids=st.lists(st.integers(0, 4), min_size=2, max_size=50), k=st.sampled_from([0.0, 0.1, 1.0, 10.0]))
def test_probs_are_distributions(ids, k):
    p = bigram_probs(count_bigrams(torch.tensor(ids), 5), k)
    assert p.dtype == torch.float32 and p.shape == (5, 5)
    assert (p >= 0).all()
    torch.testing.assert_close(p.sum(dim=1), torch.ones(5))


def test_nll_by_hand():
    probs = torch.tensor([[0.25, 0.75], [0.5, 0.5]])
    # "0 1 1": -(log 0.75 + log 0.5) / 2
    nll = bigram_nll(torch.tensor([0, 1, 1]), probs)
    assert nll.dim() == 0
    assert math.isclose(nll.item(), -(math.log(0.75) + math.log(0.5)) / 2, rel_tol=1e-6)
    # uniform guessing over V tokens costs ln V per token, whatever the text
    uniform = torch.full((65, 65), 1 / 65)
    assert math.isclose(bigram_nll(torch.tensor([3, 1, 4, 1, 5]), uniform).item(), math.log(65), rel_tol=1e-6)


def test_nll_rejects_bad_input():
    probs = torch.full((3, 3), 1 / 3)
    with pytest.raises(ValueError, match="at least 2 tokens"):
        bigram_nll(torch.tensor([1]), probs)
    with pytest.raises(ValueError, match="square"):
        bigram_nll(torch.tensor([0, 1]), torch.ones(3, 2))
    with pytest.raises(ValueError, match="1-D"):
        bigram_nll(torch.tensor([[0, 1]]), probs)


def test_smoothing_removes_infinite_nll():
    tok = CharTokenizer.from_text(TEXT)
    train = torch.tensor(tok.encode(TEXT))
    unseen = torch.tensor(tok.encode("bb"))  # "bb" never occurs in TEXT
    counts = count_bigrams(train, tok.vocab_size)
    assert bigram_nll(unseen, bigram_probs(counts, k=0)).item() == math.inf
    assert math.isfinite(bigram_nll(unseen, bigram_probs(counts, k=1)).item())


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**16))
def test_counted_table_is_the_best_bigram_on_its_text(seed):
    """Normalised counts (k=0) minimise the NLL of the text they were counted on."""
    tok = CharTokenizer.from_text(TEXT)
    tokens = torch.tensor(tok.encode(TEXT))
    best = bigram_nll(tokens, bigram_probs(count_bigrams(tokens, tok.vocab_size), k=0))
    other = F.softmax(torch.randn(tok.vocab_size, tok.vocab_size, generator=torch.Generator().manual_seed(seed)), -1)
    assert bigram_nll(tokens, other) >= best
    for k in (0.01, 1.0):
        assert bigram_nll(tokens, bigram_probs(count_bigrams(tokens, tok.vocab_size), k)) >= best


def test_counted_table_is_a_stationary_point_of_the_nll():
    tokens = torch.tensor(CharTokenizer.from_text(TEXT).encode(TEXT))
    V = int(tokens.max()) + 1
    logits = bigram_probs(count_bigrams(tokens, V), k=1e-6).log().requires_grad_()
    bigram_nll(tokens, F.softmax(logits, dim=-1)).backward()
    assert logits.grad.abs().max() < 1e-5


def test_sampling_follows_the_table():
    probs = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])  # 0 -> 1 -> 2 -> 0
    out = sample_bigrams(probs, 0, 7, torch.Generator().manual_seed(0))
    assert out.dtype == torch.long and out.tolist() == [0, 1, 2, 0, 1, 2, 0, 1]
    assert sample_bigrams(probs, 2, 0).tolist() == [2]
    with pytest.raises(ValueError, match="start"):
        sample_bigrams(probs, 3, 5)


def test_model_shapes_loss_and_start():
    model = BigramLanguageModel(11, block_size=4)
    assert model.config.vocab_size == 11 and model.config.block_size == 4
    idx = torch.randint(11, (3, 5))
    logits, loss = model(idx)
    assert logits.shape == (3, 5, 11) and logits.dtype == torch.float32 and loss is None
    _, loss = model(idx, torch.randint(11, (3, 5)))
    assert math.isclose(loss.item(), math.log(11), rel_tol=1e-6)  # zero logits: uniform guessing
    assert model(torch.tensor([[4]]))[0].shape == (1, 1, 11)  # a single token


def test_model_logits_are_table_rows():
    torch.manual_seed(0)
    model = BigramLanguageModel(6)
    torch.nn.init.normal_(model.token_embedding_table.weight)
    idx = torch.tensor([[0, 5, 5, 2]])
    logits, _ = model(idx)
    assert torch.equal(logits[0], model.token_embedding_table.weight[idx[0]])
    torch.testing.assert_close(model.probs().sum(1), torch.ones(6))


def test_model_rejects_wrong_shapes():
    model = BigramLanguageModel(5)
    with pytest.raises(ValueError, match=r"\(batch, time\)"):
        model(torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="targets"):
        model(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 4, dtype=torch.long))


def test_generate_appends_tokens_and_is_reproducible():
    model = BigramLanguageModel(7)
    start = torch.zeros(2, 1, dtype=torch.long)
    a = model.generate(start, 10, generator=torch.Generator().manual_seed(1))
    b = model.generate(start, 10, generator=torch.Generator().manual_seed(1))
    assert a.shape == (2, 11) and torch.equal(a, b) and torch.equal(a[:, :1], start)
    assert a.max() < 7


@pytest.fixture
def one_thread():
    # A 65x65 table is far too small to share between threads; on a busy machine the
    # threads mostly wait for each other (25 s instead of 2 s for this test).
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.slow
def test_neural_bigram_converges_to_the_counted_table(one_thread):
    """Trained by the GPT's loop, the neural bigram nearly reaches the counting model's NLL."""
    text = "the quick brown fox jumps over the lazy dog. " * 40 + "a bad cat ate the fat rat. " * 40
    tok = CharTokenizer.from_text(text)
    data = torch.tensor(tok.encode(text))
    best = bigram_nll(data, bigram_probs(count_bigrams(data, tok.vocab_size), k=0)).item()
    model = BigramLanguageModel(tok.vocab_size, block_size=16)
    cfg = TrainConfig(batch_size=32, max_iters=600, lr=0.1, weight_decay=0.0, eval_interval=600, eval_iters=4)
    train(model, data, data, cfg, progress=False)
    got = bigram_nll(data, model.probs()).item()
    assert best <= got < best + 0.03, (got, best)
    x, y = get_batch(data, 4, 16, torch.Generator().manual_seed(0))
    assert model(x, y)[1].item() < math.log(tok.vocab_size) / 2

import pytest
import torch

from babybitnet.data import load_dataset
from babybitnet.gpt import GPT, GPTConfig
from babybitnet.presets import get_preset
from babybitnet.train import TrainConfig, TrainingInterrupted, estimate_loss, lr_at, train, weight_decay_at


def test_lr_schedules():
    c = TrainConfig(lr=1.0, max_iters=100, schedule="constant", warmup_iters=10)
    assert lr_at(0, c) == pytest.approx(0.1) and lr_at(9, c) == 1.0 and lr_at(99, c) == 1.0
    c = TrainConfig(lr=1.0, min_lr=0.1, max_iters=110, schedule="cosine", warmup_iters=10)
    assert lr_at(10, c) == pytest.approx(1.0) and lr_at(60, c) == pytest.approx(0.55) and lr_at(110, c) == 0.1
    c = TrainConfig(
        lr=1.0, lr_stage2=0.4, max_iters=100, schedule="two_stage", weight_decay=0.1, weight_decay_stage2=0.0
    )
    assert lr_at(49, c) == 1.0 and lr_at(50, c) == pytest.approx(0.4) and lr_at(100, c) == pytest.approx(0.0)
    assert weight_decay_at(49, c) == 0.1 and weight_decay_at(50, c) == 0.0
    with pytest.raises(ValueError, match="schedule"):
        TrainConfig(schedule="linear")


def test_presets():
    g, tg = get_preset("seed", "gpt")
    b, tb = get_preset("seed", "bitnet")
    assert (g.linear, b.linear, tg.lr, tb.lr) == ("fp", "bitnet", 1e-3, 9e-4)
    assert (tg.batch_size, g.block_size, tg.max_iters, tg.eval_iters) == (16, 32, 5000, 200)
    assert not b.bitlinear_norm
    _, t = get_preset("seed", "gpt", max_iters=50, seed=None)
    assert t.max_iters == 50 and t.eval_interval == 10 and t.seed == 1337
    r, tr = get_preset("recipe", "bitnet")
    assert (r.n_embd, r.n_head, r.n_layer, r.block_size, tr.batch_size, tr.max_iters) == (64, 4, 4, 32, 16, 5000)
    assert tr.schedule == "two_stage" and tr.lr > tb.lr and r.activation == "relu2"
    with pytest.raises(ValueError, match="unknown preset"):
        get_preset("huge", "gpt")
    with pytest.raises(ValueError, match="unknown model"):
        get_preset("seed", "llama")


def test_estimate_loss_is_the_mean_over_windows():
    tok, train_data, _ = load_dataset()
    torch.manual_seed(0)
    m = GPT(get_preset("quick", "gpt")[0])
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    chunked = estimate_loss(m, train_data, 4, 10, 32, g1, torch.device("cpu"), chunk=8)
    whole = estimate_loss(m, train_data, 4, 10, 32, g2, torch.device("cpu"), chunk=1000)
    assert chunked == pytest.approx(whole, rel=1e-5)
    assert m.training  # the mode is restored


def test_short_training_run_learns_and_records_history():
    tok, train_data, val_data = load_dataset()
    mcfg, tcfg = get_preset("quick", "bitnet", max_iters=60, eval_iters=4)
    torch.manual_seed(0)
    r = train(GPT(mcfg), train_data, val_data, tcfg, progress=False)
    h = r["history"]
    assert h["step"][0] == 0 and h["step"][-1] == 60 and len(h["val"]) == len(h["train"]) == len(h["step"])
    assert r["final_val"] < h["val"][0] - 0.3
    assert r["best_val"] == min(h["val"]) and r["ms_per_step"] > 0


@pytest.mark.parametrize("model", ["gpt", "bitnet"])
def test_bfloat16_autocast_trains_and_keeps_float32_weights(model):
    # bf16 autocast (meant for GPUs) also runs on the CPU: BitLinear's backward must match the forward's dtype
    tok, train_data, val_data = load_dataset()
    mcfg, tcfg = get_preset("quick", model, tok.vocab_size, max_iters=4, eval_iters=2, dtype="bfloat16")
    torch.manual_seed(0)
    net = GPT(mcfg)
    r = train(net, train_data, val_data, tcfg, progress=False)
    assert all(torch.isfinite(torch.tensor(v)) for v in r["history"]["val"])
    assert r["history"]["val"][-1] < r["history"]["val"][0]
    assert all(p.dtype == torch.float32 for p in net.parameters())
    with pytest.raises(ValueError, match="dtype"):
        TrainConfig(dtype="float8")


def test_two_stage_boundary_is_the_same_step_for_lr_and_weight_decay():
    c = TrainConfig(max_iters=3333, schedule="two_stage", lr=1.0, weight_decay=0.1, weight_decay_stage2=0.0)
    assert lr_at(1665, c) == 1.0 and weight_decay_at(1665, c) == 0.1  # int(0.5 * 3333) = 1666
    assert lr_at(1666, c) == 0.5 and weight_decay_at(1666, c) == 0.0


def test_patience_stops_when_val_stops_improving():
    # lr=0 and a val text of one repeated character: every estimate is exactly the same number,
    # so val never beats its first value and patience=2 must stop after the second evaluation.
    tok, train_data, _ = load_dataset()
    val_data = torch.zeros(500, dtype=torch.long)
    cfg = dict(max_iters=40, lr=0.0, eval_interval=5, eval_iters=1, batch_size=4)

    def run(**kw) -> dict:
        torch.manual_seed(0)
        model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=8, n_embd=16, n_head=2, n_layer=1))
        return train(model, train_data, val_data, TrainConfig(**cfg, **kw), progress=False)

    r = run(patience=2)
    assert r["stopped_early"] and r["stopped_step"] == 10 and r["history"]["step"] == [0, 5, 10]
    assert len(set(r["history"]["val"])) == 1
    r = run(patience=0)  # off: the whole run, every evaluation
    assert not r["stopped_early"] and r["stopped_step"] == 40 and r["history"]["step"][-1] == 40
    assert len(r["history"]["step"]) == 9
    r = run(patience=8)  # would stop at step 40, which is the end anyway: not "early"
    assert not r["stopped_early"] and r["stopped_step"] == 40
    with pytest.raises(ValueError, match="patience"):
        TrainConfig(patience=-1)


def test_patience_does_not_stop_a_run_that_keeps_improving():
    tok, train_data, val_data = load_dataset()
    mcfg, tcfg = get_preset("quick", "bitnet", max_iters=60, eval_iters=4, patience=1)
    torch.manual_seed(0)
    r = train(GPT(mcfg), train_data, val_data, tcfg, progress=False)
    assert not r["stopped_early"] and r["stopped_step"] == 60 and r["history"]["step"][-1] == 60


def test_ctrl_c_keeps_the_last_evaluated_state():
    tok, train_data, val_data = load_dataset()
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=8, n_embd=16, n_head=2, n_layer=1))
    cfg = TrainConfig(batch_size=4, max_iters=20, eval_interval=5, eval_iters=2, lr=1e-2)
    seen = {}

    def press_ctrl_c(step: int) -> None:
        if step == 10:  # called before the evaluation after 10 steps too: remember the state it sees
            seen.setdefault("state", {k: v.clone() for k, v in model.state_dict().items()})
        if step == 12:
            raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted) as info:
        train(model, train_data, val_data, cfg, progress=False, on_step=press_ctrl_c, keep_last=True)
    assert info.value.step == 10 and "step 10" in str(info.value)
    assert all(torch.equal(info.value.state[k], v) for k, v in seen["state"].items())
    assert not all(torch.equal(model.state_dict()[k], v) for k, v in seen["state"].items())  # it trained on
    with pytest.raises(KeyboardInterrupt) as plain:  # without keep_last: a plain Ctrl-C
        train(model, train_data, val_data, cfg, progress=False, on_step=press_ctrl_c)
    assert not isinstance(plain.value, TrainingInterrupted)


def test_steady_ms_leaves_out_the_first_interval():
    from babybitnet.train import steady_ms

    # the first interval holds the compilation: 1 s for 10 steps; then 10, 20 and 30 ms per step
    assert steady_ms([(10, 1.0), (10, 0.1), (10, 0.2), (10, 0.3)]) == pytest.approx(20.0)
    assert steady_ms([(4, 0.2)]) == pytest.approx(50.0)  # only one interval: its own speed
    assert steady_ms([]) is None

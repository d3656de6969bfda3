"""Training: the schedule, and that a resumed run continues exactly where it stopped."""

import pytest
import torch

from qlab.train import TrainConfig, lr_at, train


def test_lr_schedule_warmup_then_cosine():
    cfg = TrainConfig(steps=100, warmup=10, lr=1.0, min_lr=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(10, cfg) == pytest.approx(1.0) and lr_at(100, cfg) == pytest.approx(0.1)
    assert lr_at(55, cfg) == pytest.approx(0.55)


def test_interrupted_and_resumed_run_equals_straight_run(tmp_path):
    cfg = TrainConfig(preset="tiny", steps=4, batch_size=2, warmup=2, eval_every=2)
    straight = train(cfg, tmp_path / "a", progress=False)
    paused = train(cfg, tmp_path / "b", progress=False, stop_at=2)
    assert paused["steps"] == 2
    torch.manual_seed(123)  # the global RNG must not matter: batches come from the checkpointed generator
    resumed = train(cfg, tmp_path / "b", progress=False)
    assert resumed["steps"] == 4 and resumed["tokens_seen"] == straight["tokens_seen"]
    for (n, p), q in zip(straight["model"].named_parameters(), resumed["model"].parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=n)


def test_resume_with_other_config_is_refused(tmp_path):
    train(TrainConfig(preset="tiny", steps=1, batch_size=2, warmup=1), tmp_path, progress=False)
    with pytest.raises(ValueError, match="different TrainConfig"):
        train(TrainConfig(preset="tiny", steps=2, batch_size=2, warmup=1), tmp_path, progress=False)


def test_bad_config():
    with pytest.raises(ValueError, match="preset"):
        TrainConfig(preset="huge")

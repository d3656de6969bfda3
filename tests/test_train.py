"""Training: the schedule, that a resumed run continues exactly where it stopped, and that a state
file is read without running code."""

import pytest
import torch

from qlab.model import GPT, PRESETS
from qlab.train import TrainConfig, load_trained_model, lr_at, train


class RunsCode:
    """Unpickling this calls open(marker, "w"): a file that runs code when it is loaded."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


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
    for field, bad in [("steps", 0), ("batch_size", -1), ("eval_every", 0), ("warmup", -1), ("lr", float("nan")),
                       ("grad_clip", -1.0), ("seed", 2**64)]:
        with pytest.raises(ValueError, match=rf"^{field} must be"):
            TrainConfig(**{field: bad})
    for field, bad in [("steps", 2.5), ("batch_size", True), ("seed", "1")]:  # not an int at all
        with pytest.raises(TypeError, match=rf"^{field} must be an int"):
            TrainConfig(**{field: bad})


def test_a_state_file_that_would_run_code_is_refused_not_run(tmp_path):
    """The resume state is read with weights_only=True: a crafted pickle is refused, naming the file."""
    marker = tmp_path / "ran"
    torch.save({"model": RunsCode(marker)}, tmp_path / "train_state.pt")
    cfg = TrainConfig(preset="tiny", steps=1, batch_size=2, warmup=1)
    with pytest.raises(ValueError, match=r"train_state\.pt was not loaded: loading it would call _?io\.open"):
        train(cfg, tmp_path, progress=False)
    with pytest.raises(ValueError, match=r"train_state\.pt was not loaded"):
        load_trained_model(tmp_path / "train_state.pt")  # what benchmarks/bench_*.py --state read
    assert not marker.exists()
    assert train(cfg, tmp_path, resume=False, progress=False)["steps"] == 1  # resume=False ignores it


def test_trained_model_of_a_state_file(tmp_path):
    record = train(TrainConfig(preset="tiny", steps=1, batch_size=2, warmup=1), tmp_path, progress=False)
    model = load_trained_model(tmp_path / "train_state.pt")
    assert isinstance(model, GPT) and model.config == PRESETS["tiny"] and not model.training
    for (n, p), q in zip(record["model"].named_parameters(), model.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=n)
    torch.save({"model": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="other.pt is not a qlab training state"):
        load_trained_model(tmp_path / "other.pt")

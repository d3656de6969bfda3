"""The `qlab` command: subcommands parse, options after `bench` reach the benchmark, bad options fail."""

import pytest
import torch

from qlab.checkpoint import RETRAIN_HINT
from qlab.cli import main


def test_info(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "torch" in out and "kernel path" in out


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU `bench` measures for minutes")
def test_bench_options_pass_through_and_print_the_roofline(capsys):
    assert main(["bench", "--quick"]) == 0
    assert "Roofline model" in capsys.readouterr().out


def test_unknown_option_is_an_error(capsys):
    assert main(["info", "--quick"]) == 2
    assert capsys.readouterr().err == "qlab: error: info: unrecognized arguments: --quick\n"


def test_a_missing_checkpoint_is_one_line_with_the_remedy(monkeypatch, capsys):
    def missing():
        raise FileNotFoundError(f"checkpoint qlab/checkpoints/small.pt is missing; {RETRAIN_HINT}")

    monkeypatch.setattr("qlab.checkpoint.load_model", missing)
    assert main(["demo"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == f"qlab: error: checkpoint qlab/checkpoints/small.pt is missing; {RETRAIN_HINT}\n"


def test_demo_runs_on_the_shipped_model(capsys):
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "perplexity" in out and "parameters" in out

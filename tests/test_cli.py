"""The `qlab` command: subcommands parse, options after `bench` reach the benchmark, bad options fail."""

import pytest
import torch

from qlab.cli import main


def test_info(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "torch" in out and "kernel path" in out


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU `bench` measures for minutes")
def test_bench_options_pass_through_and_print_the_roofline(capsys):
    assert main(["bench", "--quick"]) == 0
    assert "Roofline model" in capsys.readouterr().out


def test_unknown_option_is_an_error():
    with pytest.raises(SystemExit):
        main(["info", "--quick"])


def test_demo_runs_on_the_shipped_model(capsys):
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "perplexity" in out and "parameters" in out

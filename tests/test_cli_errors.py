"""Every user error of the `qlab` command: exit status 2, one line `qlab: error: ...` on stderr, no
traceback, and no work started first (loading the model, training and measuring are replaced by
functions that fail the test if called)."""

import subprocess
import sys

import pytest
import torch

from _tools import assert_user_error
from qlab import scoreboard as sb


class RunsCode:
    """Unpickling this calls open(marker, "w"): a file that runs code when it is loaded."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


@pytest.fixture(autouse=True)
def no_work(monkeypatch):
    def work(*args, **kwargs):
        raise AssertionError("work started before the arguments were checked")

    for target in ("qlab.checkpoint.load_model", "qlab.checkpoint.refresh_card", "qlab.checkpoint.save_checkpoint",
                   "qlab.train.train", "qlab.scoreboard.run_method", "qlab.scoreboard.run_standard_set",
                   "qlab.scoreboard.calibration_samples"):
        monkeypatch.setattr(target, work)


@pytest.fixture
def a_file(tmp_path):
    path = tmp_path / "a_file"
    path.write_text("not a folder")
    return path


# ----------------------------------------------------------------------------- every subcommand


@pytest.mark.parametrize("argv,fragment", [
    ([], "required: command"),
    (["nope"], "invalid choice: 'nope'"),
    (["info", "--quick"], "info: unrecognized arguments: --quick"),
    (["info", "extra"], "info: unrecognized arguments: extra"),
    (["card", "--fast"], "card: unrecognized arguments: --fast"),
    (["demo", "--steps", "3"], "demo: unrecognized arguments: --steps 3"),
])
def test_unknown_commands_and_options(capsys, argv, fragment):
    assert_user_error(capsys, argv, fragment)


@pytest.mark.parametrize("argv,fragment", [
    (["--steps", "ten"], "argument --steps: invalid int value: 'ten'"),
    (["--steps", "-1"], "steps must be >= 1, got -1"),
    (["--batch-size", "0"], "batch_size must be >= 1, got 0"),
    (["--seed", str(2**70)], "seed must be an int"),
    (["--lr", "-1"], "lr must be a finite number >= 0, got -1.0"),
    (["--lr", "nan"], "lr must be a finite number >= 0, got nan"),
    (["--preset", "big"], "preset must be one of ['small', 'small_sink', 'tiny'], got 'big'"),
    (["--warmup", "3"], "unrecognized arguments: --warmup 3"),
])
def test_train_arguments(capsys, tmp_path, argv, fragment):
    assert_user_error(capsys, ["train", "--workdir", str(tmp_path / "w"), *argv], fragment)


def test_train_output_paths(capsys, tmp_path, a_file):
    assert_user_error(capsys, ["train", "--workdir", str(a_file)], "--workdir", "is not a directory")
    assert_user_error(capsys, ["train", "--workdir", str(a_file / "sub")], "--workdir", "is a file")
    assert_user_error(capsys, ["train", "--workdir", str(tmp_path / "w"), "--out", str(a_file / "ckpt")],
                      "--out", "is a file")


def test_train_refuses_a_resume_state_that_would_run_code(capsys, tmp_path):
    marker = tmp_path / "ran"
    (tmp_path / "w").mkdir()
    torch.save({"model": RunsCode(marker)}, tmp_path / "w" / "train_state.pt")
    assert_user_error(capsys, ["train", "--workdir", str(tmp_path / "w"), "--out", str(tmp_path / "ckpt")],
                      "train_state.pt", "io.open", "--fresh")
    assert not marker.exists()


def test_train_refuses_a_state_of_another_configuration(capsys, tmp_path):
    (tmp_path / "w").mkdir()
    state = {"model": {}, "optimizer": {}, "generator": torch.zeros(1, dtype=torch.uint8), "step": 1,
             "elapsed": 1.0, "history": [], "train_config": {"steps": 7}}
    torch.save(state, tmp_path / "w" / "train_state.pt")
    assert_user_error(capsys, ["train", "--workdir", str(tmp_path / "w"), "--out", str(tmp_path / "ckpt")],
                      "train_state.pt", "different TrainConfig")


@pytest.mark.parametrize("argv,fragment", [
    (["--bogus"], "bench: unrecognized arguments: --bogus"),
    (["--quick", "extra"], "bench: unrecognized arguments: extra"),
])
def test_bench_options_are_checked_by_its_own_parser(capsys, argv, fragment):
    assert_user_error(capsys, ["bench", *argv], fragment)


def test_bench_output_folder_is_checked_before_measuring(capsys, monkeypatch, a_file):
    """With a GPU the benchmark measures for minutes and then writes to --out-dir: checked first."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr("qlab.kernels.bench.main", lambda argv: pytest.fail("the benchmark started"))
    assert_user_error(capsys, ["bench", "--quick", "--out-dir", str(a_file)], "--out-dir", "is not a directory")
    assert_user_error(capsys, ["bench", "--out-dir"], "bench: argument --out-dir: expected one argument")


@pytest.mark.parametrize("argv,fragments", [
    # wrong type
    (["--method", "rtn", "--wbits", "four"], ["argument --wbits: invalid float value: 'four'"]),
    (["--method", "rtn", "--calib", "1.5"], ["argument --calib: invalid int value: '1.5'"]),
    (["--method", "rtn", "--group-size", "7.5"], ["argument --group-size"]),
    # out of range
    (["--method", "rtn", "--wbits", "0"], ["wbits for 'rtn' must be one of (2, 3, 4, 8)"]),
    (["--method", "gptq", "--wbits", "3.5"], ["wbits for 'gptq' must be one of (2, 3, 4, 8), got 3.5"]),
    (["--method", "rtn", "--wbits", "nan"], ["wbits for 'rtn'", "nan"]),
    (["--method", "rtn", "--group-size", "7"], ["group_size 7 must divide", "[256, 1024]"]),
    (["--method", "awq", "--group-size", "0"], ["argument --group-size"]),
    (["--method", "gptq", "--calib", "0"], ["calib_samples must be >= 1, got 0"]),
    (["--all", "--calib", "-3"], ["calib_samples must be >= 1, got -3"]),
    (["--method", "awq", "--seed", str(2**70)], ["seed must be an int"]),
    (["--method", "smoothquant", "--alpha", "1.5"], ["--alpha must be a number in [0, 1]"]),
    (["--method", "mixed", "--wbits", "1"], ["budget wbits=1 is below the smallest achievable 2.5000"]),
    (["--method", "mixed", "--wbits", "2.2"], ["budget wbits=2.2 is below"]),
    (["--method", "mixed", "--wbits", "inf"], ["method 'mixed' takes wbits", "finite"]),
    (["--method", "mixed"], ["method 'mixed' takes wbits"]),
    # bad combination
    (["--method", "w8a8", "--wbits", "4"], ["method 'w8a8' is W8A8: wbits and abits must be 8"]),
    (["--method", "fp8", "--abits", "4"], ["method 'fp8' is W8A8"]),
    (["--method", "rtn", "--abits", "8"], ["--method rtn does not use --abits", "takes --group-size, --wbits"]),
    # an option the method would ignore is a mistake, not a silent no-op
    (["--method", "rtn", "--alpha", "0.8"], ["--method rtn does not use --alpha"]),
    (["--method", "float", "--wbits", "3"], ["--method float does not use --wbits", "takes none of them"]),
    (["--method", "llm_int8", "--act", "per_tensor", "--calib", "64"], ["does not use --act, --calib"]),
    (["--all", "--wbits", "3"], ["--all does not use --wbits", "takes --calib, --seed"]),
    (["--method", "mixed", "--wbits", "3", "--group-size", "512"], ["group_size 512 must divide"]),
    ([], ["give either --method or --all"]),
    (["--method", "rtn", "--all"], ["give either --method or --all"]),
    # unknown option
    (["--method", "rtn", "--bits", "4"], ["ptq: unrecognized arguments: --bits 4"]),
    (["--method", "hqq"], ["argument --method: invalid choice: 'hqq'"]),
])
def test_ptq_arguments_are_checked_before_the_model_is_loaded(capsys, argv, fragments):
    assert_user_error(capsys, ["ptq", "--fast", *argv], *fragments)


def test_ptq_output_paths_are_checked_before_the_model_is_loaded(capsys, tmp_path, a_file):
    rtn = ["ptq", "--method", "rtn", "--fast"]
    assert_user_error(capsys, [*rtn, "--json", str(tmp_path)], "--json", "is a directory, not a file")
    assert_user_error(capsys, [*rtn, "--json", str(a_file / "rows.json")], "--json", "is a file")
    assert_user_error(capsys, ["ptq", "--all", "--out-dir", str(a_file)], "--out-dir", "is not a directory")
    assert_user_error(capsys, ["ptq", "--all", "--out-dir", str(a_file / "sub")], "--out-dir", "is a file")


def test_standard_set_is_checked_row_by_row_before_any_is_measured(capsys, monkeypatch):
    monkeypatch.setattr(sb, "STANDARD_SET", sb.STANDARD_SET + (("gptq", 5, 128, None),))
    assert_user_error(capsys, ["ptq", "--all", "--fast"], "wbits for 'gptq' must be one of (2, 3, 4, 8), got 5")


def test_as_a_process_a_user_error_is_one_line_and_status_2():
    run = subprocess.run([sys.executable, "-m", "qlab", "ptq", "--method", "rtn", "--wbits", "0"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr.splitlines() == ["qlab: error: wbits for 'rtn' must be one of (2, 3, 4, 8), got 0.0"]

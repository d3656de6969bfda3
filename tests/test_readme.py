"""README.md: its scoreboard is the committed measurement, and the commands it names exist."""

import re
from pathlib import Path

import pytest

from _tools import load_tool

ROOT = Path(__file__).resolve().parents[1]


def readme_tool():
    return load_tool("readme_blocks")


def test_the_readme_measurements_are_the_committed_json():
    tool = readme_tool()
    text = (ROOT / "README.md").read_text()
    assert tool.replace_block(text, tool.block()) == text, "run python tools/readme_blocks.py"
    assert tool.replace_block(text, tool.times_block(), tool.TIMES_START, tool.TIMES_END) == text
    assert tool.replace_block(text, tool.hosting_block(), tool.HOSTING_START, tool.HOSTING_END) == text
    assert tool.replace_block(text, tool.phenomena_block(), tool.PHENOMENA_START, tool.PHENOMENA_END) == text
    assert tool.main(["--check"]) == 0


def test_the_hosting_figures_follow_from_the_measurements():
    """The instructor's memory and CPU figures are the heaviest notebook's, and the limit covers two kernels."""
    import json

    tool = readme_tool()
    record = json.loads(tool.notebook_times_file().read_text())
    heaviest = max(r["peak_rss_mib"] for r in record["notebooks"])
    block = tool.hosting_block()
    assert f"peaks at {heaviest} MiB" in block and f"holds {record['jupyterlab_server_rss_mib']} MiB" in block
    limit = float(re.search(r'mem_limit = "([\d.]+)G"', block).group(1)) * 1024
    assert limit >= record["jupyterlab_server_rss_mib"] + 2 * heaviest
    assert all(r["cpu_seconds"] > 0 and 0 < r["peak_rss_mib"] < 8192 for r in record["notebooks"])


def test_the_notebook_times_cover_every_notebook_within_the_targets():
    """Every built notebook was timed; each under 90 s and all under 10 minutes (issue 6's targets)."""
    import json

    tool = readme_tool()
    record = json.loads(tool.notebook_times_file().read_text())
    timed = {r["notebook"] for r in record["notebooks"]}
    assert timed == {p.stem for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")}
    assert all(0 < r["seconds"] < 90 and r["passed"] > 0 for r in record["notebooks"]), record
    assert sum(r["seconds"] for r in record["notebooks"]) < 600


def test_the_block_names_the_machine_and_every_row(tmp_path):
    from qlab.lessons.capstone import main_scoreboard

    tool = readme_tool()
    board = main_scoreboard()
    block = tool.block()
    assert board.machine in block and block.startswith(tool.START) and block.endswith(tool.END)
    table = [line for line in block.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + len(board.rows)
    for row, line in zip(board.rows, table[1:]):
        assert f"{row.perplexity:.4f}" in line and f"{row.size_mb:.3f}" in line
    with pytest.raises(ValueError, match="one"):
        tool.replace_block("no markers here", block)


def test_the_commands_the_readme_names_exist():
    text = (ROOT / "README.md").read_text()
    makefile = (ROOT / "Makefile").read_text()
    for target in set(re.findall(r"^make (\w+)", text, flags=re.M)):
        assert re.search(rf"^{target}:", makefile, flags=re.M), f"make {target} is not in the Makefile"
    for script in set(re.findall(r"(benchmarks/\w+\.py|tools/\w+\.py)", text)):
        assert (ROOT / script).exists(), script

"""bench/run_all.py --write-table: a benchmark's `result:` line becomes its row of docs/benchmarks.md (value, date,
machine), and nothing else in the table changes. Run on a copy of the real table, with a real child process."""

from __future__ import annotations

import importlib.util
import re
import shutil
import sys

import pytest

from tests.conftest import PROJECT_DIR

TABLE = PROJECT_DIR / "docs" / "benchmarks.md"


def load_run_all():
    spec = importlib.util.spec_from_file_location("run_all", PROJECT_DIR / "bench" / "run_all.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


run_all = load_run_all()


def row_of(text: str, name: str) -> list[str]:
    rows = [line for line in text.splitlines() if line.startswith(f"| `{name}`")]
    assert len(rows) == 1, (name, rows)
    return [cell.strip() for cell in rows[0].split("|")[1:-1]]


def test_every_benchmark_of_the_suite_has_one_row():
    text = TABLE.read_text()
    for name, _, _ in run_all.SUITE:
        assert len(row_of(text, name)) == 5


def test_a_result_line_rewrites_its_row_and_nothing_else(tmp_path):
    fake = tmp_path / "fake_bench.py"
    fake.write_text("print('== a benchmark that misses its target')\nprint('result: old')\n"
                    "print('MISSED something')\nprint('result: 0.123x | odd')\nraise SystemExit(1)\n")
    code, result = run_all.run_benchmark([sys.executable, str(fake)], tmp_path)
    assert (code, result) == (1, "0.123x | odd")  # the last result line; a missed target still reports

    table = tmp_path / "benchmarks.md"
    shutil.copyfile(TABLE, table)
    before = table.read_text()
    missing = run_all.write_table(table, {"eval_share": result}, "2031-01-02", "Test CPU, 3 cores")
    assert missing == []
    after = table.read_text()
    name, value, target, date, machine = row_of(after, "eval_share")
    assert (value, date, machine) == ("0.123x / odd", "2031-01-02", "Test CPU, 3 cores")
    assert target == row_of(before, "eval_share")[2]
    changed = [(a, b) for a, b in zip(before.splitlines(), after.splitlines()) if a != b]
    assert len(changed) == 1 and len(before.splitlines()) == len(after.splitlines())


def test_a_benchmark_without_a_row_is_reported(tmp_path):
    table = tmp_path / "benchmarks.md"
    shutil.copyfile(TABLE, table)
    assert run_all.write_table(table, {"no_such_bench": "1x"}, "2031-01-02", "Test CPU") == ["no_such_bench"]
    assert table.read_text() == TABLE.read_text()


def test_a_benchmark_without_a_result_line_reports_none(tmp_path):
    fake = tmp_path / "silent.py"
    fake.write_text("print('figures, but no result line')\n")
    assert run_all.run_benchmark([sys.executable, str(fake)], tmp_path) == (0, None)


def test_the_machine_names_the_cpu_and_its_cores():
    assert re.fullmatch(r".+, \d+ cores(, .+)?", run_all.machine()), run_all.machine()


@pytest.mark.slow
def test_a_real_benchmark_ends_with_its_result(tmp_path):
    """The cheapest benchmark of the suite, cut short: its result line is what --write-table would write."""
    script = PROJECT_DIR / "bench" / "optimizer_step.py"
    code, result = run_all.run_benchmark([sys.executable, str(script), "--steps", "1", "--reps", "2"], tmp_path)
    assert result and result.endswith("weights"), result

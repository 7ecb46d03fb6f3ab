"""Every command in docs/guide.md runs: training commands with a test-sized model and two steps, sweeps as dry
runs; the lab's own commands through their click commands in this process, the shell script and `mlflow run` as
processes of their own. A command of a form this test does not know fails it, so the guide cannot rot."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from pipeline.files import child_python_path
from tests.conftest import PROJECT_DIR, TINY_MODEL, run_command

GUIDE = PROJECT_DIR / "docs" / "guide.md"
CHEAP_TRAINING = [*TINY_MODEL, "--max-steps", "2", "--eval-interval", "1", "--sample-interval", "2",
                  "--sample-tokens", "4", "--val-windows", "2"]
SET_UP = ("python3.11 -m venv", "source .venv/bin/activate")  # run by .ci/run itself


def guide_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", GUIDE.read_text(), flags=re.S)
    lines = [line.strip() for block in blocks for line in block.splitlines()]
    return [line.split("  #")[0].strip() for line in lines if line and not line.startswith("#")]


def run(args: list[str], cwd) -> subprocess.CompletedProcess:
    bin_dir = os.path.dirname(sys.executable)
    env = {**os.environ, "PYTHONPATH": child_python_path(), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_the_guide_has_commands_for_every_part():
    commands = guide_commands()
    assert any("pipeline.train --config nano --corpus verdict --epochs 3" in c for c in commands)
    for sweep in ("memorization", "lr_sensitivity", "context_length", "scaling", "tokenizers", "finetune", "induction",
                  "optimizers"):
        assert f"python -m pipeline.sweep --name {sweep}" in commands


@pytest.mark.slow
def test_every_command_in_the_guide_runs(store, tmp_path):
    client = MlflowClient(store)
    smoke = run([sys.executable, "-m", "pipeline.sweep", "--name", "smoke"], cwd=tmp_path)
    assert smoke.returncode == 0, smoke.stderr
    parent_id = re.search(r"parent run (\w+)", smoke.stdout).group(1)
    run_id = None
    for command in guide_commands():
        if command.startswith(SET_UP):
            continue
        words = shlex.split(command)
        module, given = (words[2], words[3:]) if words[:2] == ["python", "-m"] else (None, [])
        if words[0] == "./run-dashboard.sh":
            result = run([str(PROJECT_DIR / "run-dashboard.sh"), "--help"], tmp_path)
        elif words[:3] == ["mlflow", "run", "."] and "-e" in words and words[words.index("-e") + 1] == "sweep":
            result = run([*words[:2], str(PROJECT_DIR), *words[3:], "-P", "dry_run=true"], tmp_path)
        elif module == "pipeline.train" and given[:2] == ["--resume", "RUN_ID"]:
            assert run_id and given[2] == "--max-steps", command  # the last run, 2 steps long: trained longer
            result = run_command(module, "--resume", run_id, "--max-steps", "4", cwd=tmp_path)
        elif module == "pipeline.train":
            # a documented run has a budget of its own: one epoch of a large corpus is days on a laptop
            assert {"--epochs", "--max-steps", "--max-tokens"} & set(given), f"no budget: {command}"
            given = [run_id if word == "RUN_ID" else word for word in given]
            result = run_command(module, *given, *CHEAP_TRAINING, cwd=tmp_path)
        elif module == "pipeline.sweep":
            result = run_command(module, *given, "--dry-run", cwd=tmp_path)
        elif module in ("pipeline.download", "pipeline.tokenize"):
            result = run_command(module, *given, cwd=tmp_path)
        elif module in ("pipeline.generate", "pipeline.inspect"):
            assert run_id, f"the guide runs {module} before it trains"
            result = run_command(module, *[run_id if w == "RUN_ID" else w for w in given], cwd=tmp_path)
        elif module == "pipeline.report":
            result = run_command(module, *[parent_id if w == "PARENT_ID" else w for w in given], "--out",
                                 str(tmp_path / "report"), cwd=tmp_path)
        else:
            raise AssertionError(f"the guide has a command this test does not know how to run: {command}")
        assert result.returncode == 0, (command, result.stderr[-2000:])
        if module == "pipeline.train":
            run_id = re.search(r"run (\w+) finished", result.stdout).group(1)
            assert client.get_run(run_id).info.status == "FINISHED"

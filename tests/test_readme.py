"""The README renders as written and its commands work: its code fences pair up, each on a line of its own, and
every shell line of its bash blocks is run here (training with a test-sized model and two steps), checked with
`--help` or `--dry-run`, run by CI word for word, or run already by tests/test_guide.py. A line of a form this test
does not know fails it, so the README cannot rot."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipeline.files import child_python_path
from tests.conftest import PROJECT_DIR, run_command
from tests.test_guide import CHEAP_TRAINING, guide_commands, run

README = PROJECT_DIR / "README.md"
CI = PROJECT_DIR / ".ci" / "run"
VENV = ".venv/bin/"
SHELL_LANGUAGES = ("bash", "sh", "shell", "console", "zsh")


def fence_problems(text: str) -> list[str]:
    """What keeps the page from rendering its code blocks as written: an odd number of fences, a fence that does
    not start its line, an opening fence with more than a language, a closing fence with anything after it."""
    fences = [(number, line) for number, line in enumerate(text.splitlines(), 1) if "```" in line]
    problems = [f"{len(fences)} fences: one is not closed"] if len(fences) % 2 else []
    for index, (number, line) in enumerate(fences):
        if not line.startswith("```"):
            problems.append(f"line {number}: a fence must start its line: {line!r}")
        elif index % 2 == 0 and not re.fullmatch(r"```[A-Za-z0-9_+-]*", line):
            problems.append(f"line {number}: an opening fence is ``` and a language, nothing more: {line!r}")
        elif index % 2 == 1 and line != "```":
            problems.append(f"line {number}: text after a closing fence: {line!r}")
    return problems


def readme_commands(text: str) -> list[str]:
    """Every command line of the README's shell blocks, comments dropped."""
    blocks = re.findall(r"^```(\w*)\n(.*?)^```$", text, flags=re.S | re.M)
    lines = [line.strip() for language, block in blocks if language in SHELL_LANGUAGES
             for line in block.splitlines()]
    return [line.split("  #")[0].strip() for line in lines if line and not line.startswith("#")]


def python_module(words: list[str]) -> tuple[str | None, list[str]]:
    """(module, its arguments) of `python -m module ...` (also .venv/bin/python), else (None, [])."""
    if len(words) > 2 and words[0] in ("python", VENV + "python") and words[1] == "-m":
        return words[2], words[3:]
    return None, []


def test_the_fences_pair_up_each_on_a_line_of_its_own():
    assert fence_problems(README.read_text()) == []


def test_a_broken_fence_is_caught():
    """The README's old fault, and its kin: each of these would turn prose into code or code into prose."""
    good = "Prose.\n\n```bash\necho hi\n```\n\nMore prose.\n"
    assert fence_problems(good) == []
    assert fence_problems(good.replace("```\n\nMore", "``` More")) == [
        "line 5: text after a closing fence: '``` More prose.'"]
    assert fence_problems(good + "```bash\necho unclosed\n")[0] == "3 fences: one is not closed"
    assert fence_problems(good.replace("```bash", "  ```bash"))[0].startswith("line 3: a fence must start")
    assert fence_problems(good.replace("```bash", "```bash echo"))[0].startswith("line 3: an opening fence")


def test_the_readme_is_a_front_door():
    text = README.read_text()
    assert len(text.splitlines()) <= 160, "the README is the front door: details belong in docs/"
    ci = CI.read_text()
    commands = readme_commands(text)
    setup = [c for c in commands if c.startswith("python3.11 -m venv")]
    assert len(setup) == 2, setup
    assert setup[1] in ci.splitlines(), "CI runs the README's test command word for word"
    for link in re.findall(r"\]\(((?:docs|pipeline|model|bench|tests|corpus)[^)#]*)", text):
        assert (PROJECT_DIR / link).exists(), link


def check_setup(command: str, ci: str, already: set[str]) -> None:
    """`python3.11 -m venv .venv && .venv/bin/pip install ... && .venv/bin/python ...`: CI runs the venv step and
    the whole test command; the pip step's extras and constraints exist; the training step is the guide's."""
    if command in ci.splitlines():
        return
    venv, install, *rest = [part.strip() for part in command.split("&&")]
    assert venv in ci, venv
    words = shlex.split(install)
    assert words[:4] == [VENV + "pip", "install", "-c", "constraints.txt"], install
    assert (PROJECT_DIR / "constraints.txt").exists()
    extras = re.fullmatch(r"\.(?:\[([\w,]+)\])?", words[words.index("-e") + 1]).group(1)
    known = tomllib.loads((PROJECT_DIR / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert set(extras.split(",") if extras else []) <= set(known), extras
    for step in rest:
        assert step.removeprefix(VENV) in already, f"no test runs the README's {step!r}"


def stopped_run(cwd: Path) -> str:
    """A run stopped by Ctrl-C (SIGINT) at its second step, as the README describes: checkpointed, KILLED."""
    env = {**os.environ, "PYTHONPATH": child_python_path()}
    process = subprocess.Popen([sys.executable, "-m", "pipeline.train", "--corpus", "tiny", *CHEAP_TRAINING,
                                "--max-steps", "50", "--log-interval", "1"], cwd=cwd, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = ""
    for line in process.stdout:
        seen += line
        if line.startswith("step 2/"):
            process.send_signal(signal.SIGINT)
            break
    out, err = process.communicate(timeout=300)
    assert process.returncode == 130, err[-2000:]
    return re.search(r"run ([0-9a-f]{32})", seen + out + err).group(1)


@pytest.mark.slow
def test_every_command_in_the_readme_runs(store, tmp_path):
    client = MlflowClient(store)
    ci = CI.read_text()
    already = set(guide_commands())  # tests/test_guide.py runs these
    run_id = None
    for command in readme_commands(README.read_text()):
        if command.startswith("python3.11 -m venv"):
            check_setup(command, ci, already)
            continue
        if command.removeprefix(VENV) in already:
            continue
        words = shlex.split(command)
        while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):  # VARIABLE=value before the command
            words = words[1:]
        module, given = python_module(words)
        if words[:2] in ([VENV + "mlflow", "ui"], ["mlflow", "ui"]):
            result = run([str(Path(sys.executable).parent / "mlflow"), "ui", "--help"], tmp_path)
            for option in (w for w in words[2:] if w.startswith("--")):
                assert option in result.stdout, (command, option)
        elif words[0] == "./run-dashboard.sh":
            result = run([str(PROJECT_DIR / "run-dashboard.sh"), "--help"], tmp_path)
        elif module == "pipeline.sweep":
            result = run_command(module, *given, *([] if "--dry-run" in given else ["--dry-run"]), cwd=tmp_path)
        elif module == "pipeline.train" and given == ["--resume", "RUN_ID"]:
            run_id = stopped_run(tmp_path)
            assert client.get_run(run_id).info.status == "KILLED"
            result = run_command(module, "--resume", run_id, cwd=tmp_path)
            assert client.get_run(run_id).info.status == "FINISHED"
        elif module == "pipeline.train" and given[:2] == ["--resume", "RUN_ID"]:
            assert given[2:] == ["--max-steps", "600"] and run_id, command  # train the finished run longer
            result = run_command(module, "--resume", run_id, "--max-steps", "60", cwd=tmp_path)  # its 50 steps, +10
            assert "plan: extended from 50 to 60 steps" in result.stdout, result.stdout[-2000:]
            assert client.get_run(run_id).info.status == "FINISHED"
        elif module == "pipeline.inspect" and given[:2] == ["--run-id", "RUN_ID"]:
            assert run_id, command  # the resumed run above, checkpointed at its last step
            result = run_command(module, "--run-id", run_id, *given[2:], cwd=tmp_path)
            assert "logged as attention/layer_N" in result.stdout, result.stdout[-2000:]
        elif module == "pipeline.train":
            assert {"--epochs", "--max-steps", "--max-tokens"} & set(given), f"no budget: {command}"
            result = run_command(module, *given, *CHEAP_TRAINING, cwd=tmp_path)
        elif words[0] == "torchrun" and "-m" in words and words[words.index("-m") + 1] == "pipeline.train":
            at = words.index("-m")
            given = words[at + 2:]
            assert {"--epochs", "--max-steps", "--max-tokens"} & set(given), f"no budget: {command}"
            torchrun = str(Path(sys.executable).parent / "torchrun")
            result = run([torchrun, *words[1:at], "-m", "pipeline.train", *given, *CHEAP_TRAINING], tmp_path)
            assert result.returncode == 0, (command, result.stderr[-2000:])
            run_id = re.search(r"run ([0-9a-f]{32}) finished", result.stdout).group(1)
            processes = re.search(r"--nproc[_-]per[_-]node[= ](\d+)", command).group(1)
            assert client.get_run(run_id).data.params["world_size"] == processes
        else:
            raise AssertionError(f"the README has a command this test does not know how to run: {command}")
        assert result.returncode == 0, (command, result.stderr[-2000:])

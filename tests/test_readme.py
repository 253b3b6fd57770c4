"""The README's Python API example runs as written."""
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_python_api_example_runs(tmp_path, monkeypatch):
    section = README.read_text().split("## Python API", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)  # the example writes runs/nade-digits
    namespace: dict = {}
    exec(compile(code, "README.md (Python API)", "exec"), namespace)
    assert namespace["log_p"].shape == (180,)
    assert (tmp_path / "runs" / "nade-digits" / "checkpoints" / "best.pt").is_file()


def _first_code_block() -> list[str]:
    text = README.read_text()
    return re.search(r"```bash\n(.*?)```", text, re.S).group(1).strip("\n").split("\n")


def test_the_first_code_block_is_the_two_set_up_commands_and_ci_runs_the_second():
    """Line 1 sets up and runs the main job, line 2 sets up and runs the tests; .ci/run extracts
    line 2 with awk, and neither line may pull CUDA packages here (the CPU constraints file)."""
    import subprocess

    lines = _first_code_block()
    assert len(lines) == 2
    setup = 'python3 -m venv .venv && .venv/bin/pip install -q -c constraints/cpu.txt -e ".[test]"'
    assert all(line.startswith(setup) for line in lines)
    assert "genzoo train made --config configs/quickstart.toml" in lines[0] and "genzoo eval" in lines[0] \
        and "genzoo sample" in lines[0]
    assert lines[1].endswith("-m pytest -q")
    ci = README.parent / ".ci" / "run"
    extracted = subprocess.run(["bash", "-c", "awk '/^```/ { fence++; next } fence == 1 { print }' README.md | sed -n 2p"],
                               cwd=README.parent, capture_output=True, text=True, check=True).stdout.strip()
    assert extracted == lines[1] and "awk '/^```/ { fence++; next } fence == 1 { print }' README.md | sed -n 2p" \
        in ci.read_text()
    assert "torch==2.13.0" in (README.parent / "constraints" / "cpu.txt").read_text()


def test_the_main_jobs_config_trains_on_the_embedded_data(tmp_path):
    """configs/quickstart.toml (line 1's job) trains a MADE on mnist5k, needing no files: one epoch."""
    from genzoo.cli import main

    config = README.parent / "configs" / "quickstart.toml"
    run = tmp_path / "quickstart"
    assert main(["train", "made", "--config", str(config), "--epochs", "1", "--out", str(run), "--quiet"]) == 0
    assert main(["eval", str(run), "--quiet"]) == 0
    assert main(["sample", str(run), "-n", "4", "--out", str(run / "samples.png"), "--quiet"]) == 0
    assert (run / "samples.png").is_file() and (run / "eval_test.json").is_file()

"""The README starts with the two set-up commands, and CI runs the second one verbatim."""

from tests.conftest import REPO


def _setup_commands():
    lines = (REPO / "README.md").read_text().splitlines()
    start = lines.index("```bash")
    block = lines[start + 1 : lines.index("```", start + 1)]
    return [line for line in block if line and not line.startswith("#")]


def test_readme_starts_with_two_setup_commands():
    commands = _setup_commands()
    assert len(commands) == 2
    assert "experiments.train experiment=vae_mnist" in commands[0] and "-m pytest" in commands[1]
    assert all("-c constraints.txt" in c for c in commands)


def test_ci_runs_the_readme_test_command():
    assert _setup_commands()[1] in (REPO / ".ci" / "run").read_text()

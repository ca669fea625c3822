"""scripts/setup.sh sourced from a user's shell: nothing but the exports leaks into it, and a failure returns."""

import os
import subprocess
from pathlib import Path

from fraud_platform.config import project_root

SETUP = project_root() / "scripts" / "setup.sh"
VENV_BIN = str(project_root() / ".venv" / "bin")
# The caller's state as the shell prints it: options, shopt options, traps and the working directory.
STATE = 'set -o; shopt; trap -p; echo "pwd=$PWD"'


def _bash(script: str, cwd: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    """Run `script` in a real bash with PATH free of the project's venv (as a user's shell would be)."""
    path = os.pathsep.join(part for part in os.environ["PATH"].split(os.pathsep) if part != VENV_BIN)
    env = {**os.environ, "PATH": path, **extra}
    return subprocess.run(
        ["bash", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False
    )


def test_sourcing_leaves_the_callers_options_and_directory_as_they_were(tmp_path: Path) -> None:
    script = f"""
    set -o noclobber; shopt -s extglob; trap 'echo bye' USR1
    {{ {STATE}; }} > before
    source {SETUP}
    echo "status=$?"
    {{ {STATE}; }} > after
    echo "path=$PATH"
    echo "home=$FRAUD_PLATFORM_HOME"
    type -t _fraud_platform_setup || echo "no helper left"
    """
    done = _bash(script, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "status=0" in done.stdout
    before, after = (tmp_path / "before").read_text(), (tmp_path / "after").read_text()
    assert before == after
    assert f"pwd={tmp_path}" in after and "noclobber      \ton" in after and "extglob        \ton" in after
    assert f"path={VENV_BIN}:" in done.stdout
    assert "home=/" in done.stdout
    assert "no helper left" in done.stdout


def test_a_failure_returns_non_zero_and_the_shell_goes_on(tmp_path: Path) -> None:
    script = f'source {SETUP}; echo "status=$? and still here in $PWD"; set -o | grep -E "errexit|nounset"'
    done = _bash(script, tmp_path, FRAUD_PLATFORM_REDIS_PORT="not-a-port")
    assert f"status=1 and still here in {tmp_path}" in done.stdout
    assert "FRAUD_PLATFORM_REDIS_PORT" in done.stderr
    assert "errexit        \toff" in done.stdout and "nounset        \toff" in done.stdout


def test_a_strict_caller_stops_at_a_failure(tmp_path: Path) -> None:
    done = _bash(
        f"set -euo pipefail; source {SETUP}; echo not reached", tmp_path, FRAUD_PLATFORM_REDIS_PORT="0"
    )
    assert done.returncode == 1
    assert "not reached" not in done.stdout

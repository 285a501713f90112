"""Running Python in a child process the way a user would: from a directory outside the checkout,
so `import fasttrain` finds the installed package (with its compiled _C), not the source folder."""

import os
import subprocess
import sys
import tempfile


def run_python(*args: str, **env: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as cwd:
        return subprocess.run(
            [sys.executable, *args], capture_output=True, text=True, cwd=cwd, env={**os.environ, **env}
        )

"""The wheel: `pip install --no-build-isolation build/python` into a fresh virtual environment (with
Debian's site packages, for torch), then used from outside the checkout with no PYTHONPATH: the
package, its libraries and the `fedra` program all come from the environment."""
import os
import subprocess
import sys

from conftest import FEDRA

BUILD_PYTHON = os.path.join(os.path.dirname(os.path.abspath(FEDRA)), "python")

USE = """
import fedra, torch
core = [l.split()[-1] for l in open("/proc/self/maps") if "libfedra_core" in l][0]
assert core.startswith(sys.prefix), core
lines = fedra.simulate(fedra.loops.sgd, fedra.models.mlp(784, 16, 10), workers=1, rounds=1,
                       dataset="fmnist:limit=300,test_limit=100", options={"fedavg.local_steps": 3},
                       progress=False)
assert len(lines) == 1 and lines[0]["status"] == "ok", lines
print("used", fedra.__file__, core)
"""


def test_the_wheel_installs_into_a_virtual_environment_and_runs_a_job_from_there(tmp_path):
    env_dir = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(env_dir)], check=True)
    python = str(env_dir / "bin" / "python")
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "FEDRA")}
    clean["PIP_NO_INDEX"] = "1"  # offline: nothing is fetched
    install = subprocess.run([python, "-m", "pip", "install", "--no-build-isolation", "--no-deps", BUILD_PYTHON],
                             env=clean, capture_output=True, text=True)
    assert install.returncode == 0, install.stdout + install.stderr
    helped = subprocess.run([str(env_dir / "bin" / "fedra"), "--help"], env=clean, capture_output=True, text=True)
    assert helped.returncode == 0 and "Usage: fedra COMMAND" in helped.stdout
    used = subprocess.run([python, "-c", "import sys\n" + USE], env=clean, cwd=str(tmp_path), capture_output=True,
                          text=True, timeout=300)
    assert used.returncode == 0, used.stdout + used.stderr
    assert f"used {env_dir}" in used.stdout

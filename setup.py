"""Build hook: validate the packaged scan catalogue before any wheel or sdist is built.

Everything else about the package is in pyproject.toml. The check (``python -m spectrum_llm.catalogue``)
uses only the standard library, so it runs in an isolated build environment too.
"""

import subprocess
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


class BuildPyValidatingCatalogue(build_py):
    def run(self):
        env = {"PYTHONPATH": str(ROOT / "src")}
        done = subprocess.run([sys.executable, "-m", "spectrum_llm.catalogue"], cwd=ROOT, env=env,
                              capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"catalogue validation failed:\n{done.stderr}")
        super().run()


setup(cmdclass={"build_py": BuildPyValidatingCatalogue})

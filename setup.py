"""Only here to ship the repository's csrc/ inside the package (mishbench/csrc) on a non-editable install.

All metadata is in pyproject.toml. An editable install needs nothing: mishbench.build.csrc_dir() falls back
to the repository's csrc/.
"""
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPyWithCsrc(build_py):
    def run(self):
        super().run()
        src = Path(__file__).resolve().parent / "csrc"
        dst = Path(self.build_lib) / "mishbench" / "csrc"
        if dst.exists():
            shutil.rmtree(dst)
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.o", "*.so", "build*"))


setup(cmdclass={"build_py": BuildPyWithCsrc})

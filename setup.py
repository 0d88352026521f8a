# The package list is computed here rather than in pyproject.toml because conf/ and slurm/
# are mapped in from outside bbrctl/ (see [tool.setuptools] package-dir), which automatic
# discovery cannot see; everything else is found as usual.
from setuptools import find_packages, setup

setup(packages=find_packages(include=["bbrctl", "bbrctl.*"]) + ["bbrctl.conf", "bbrctl.slurm"])

"""Offline stand-in for the get-pip.py bootstrap that ansible-test downloads.

ansible-test runs ``python get-pip.py [pip args]`` to put pip into the sanity
venvs it creates. With no internet, ensurepip provides pip and the requested
pip version is then installed from the configured package index.
"""

import subprocess
import sys

args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
subprocess.run([sys.executable, "-m", "ensurepip", "--default-pip"], check=True)
if args:
    subprocess.run([sys.executable, "-m", "pip", "install", "--disable-pip-version-check", *args], check=True)

# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The sha256 of a controller file, cached: what kvm_image's action sends and what the fleet role asks a host for.

Private to the virtops.kvm collection (controller side): not a public API, may change without notice.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import stat
import tempfile
from collections.abc import Mapping

from ansible.errors import AnsibleFilterError
from ansible.utils.display import Display

from ansible_collections.virtops.kvm.plugins.module_utils._errors import KvmError
from ansible_collections.virtops.kvm.plugins.module_utils._image import hash_file, parse_checksum
from ansible_collections.virtops.kvm.plugins.plugin_utils._filter_input import a_list, kind

CACHE_FILE = "image-sha256.json"

display = Display()


def cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "virtops-kvm")


@contextlib.contextmanager
def _locked(path: str):
    with open(path, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _load(path: str) -> dict:
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _identity(st: os.stat_result) -> dict:
    return dict(size=st.st_size, mtime_ns=st.st_mtime_ns, ino=st.st_ino, dev=st.st_dev)


def controller_sha256(path: str, directory: str | None = None) -> tuple:
    """(sha256, size, from the cache?) of the controller file ``path``.

    The cache is one JSON file keyed by realpath; an entry holds while (size, mtime_ns, ino, dev)
    are the same. Forks hashing the same file wait for each other (a lock per file), so a play
    over many hosts reads a new image once. A cache that cannot be written only costs time.
    """
    real = os.path.realpath(path)
    directory = directory or cache_dir()
    try:
        os.makedirs(os.path.join(directory, "locks"), mode=0o700, exist_ok=True)
        lock = _locked(os.path.join(directory, "locks", hashlib.sha256(real.encode()).hexdigest()[:32] + ".lock"))
    except OSError as exc:
        display.vvv(f"kvm_image: no sha256 cache in {directory}: {exc}")
        lock = contextlib.nullcontext()
    cache = os.path.join(directory, CACHE_FILE)
    with lock:
        st = os.stat(real)
        entry = _load(cache).get(real)
        if isinstance(entry, dict) and {k: entry.get(k) for k in _identity(st)} == _identity(st):
            sha = parse_checksum(str(entry.get("sha256")))
            if sha:
                return sha, st.st_size, True
        sha, st = hash_file(real)
        try:
            with _locked(cache + ".lock"):
                data = _load(cache)
                data[real] = dict(_identity(st), sha256=sha)
                fd, tmp = tempfile.mkstemp(dir=directory, prefix=".image-sha256.")
                try:
                    with os.fdopen(fd, "w") as f:
                        json.dump(data, f, indent=1, sort_keys=True)
                    os.replace(tmp, cache)
                finally:
                    if os.path.exists(tmp):
                        os.unlink(tmp)
        except OSError as exc:
            display.vvv(f"kvm_image: cannot write the sha256 cache {cache}: {exc}")
        return sha, st.st_size, False


def base_images(value, filt: str) -> list:
    """The kvm_fleet role's base images checked: a list of dicts with a non-empty src and dest."""
    images = a_list(value, filt, "the base images")
    for i, image in enumerate(images):
        if not isinstance(image, Mapping):
            raise AnsibleFilterError(f"{filt}: the base images[{i}] must be a dict, got {kind(image)}.")
        for key in ("src", "dest"):
            if not isinstance(image.get(key), str) or not image.get(key):
                raise AnsibleFilterError(
                    f"{filt}: the base images[{i}] needs a non-empty string {key!r}, got {kind(image.get(key))}."
                )
    return images


def src_sha256(image: Mapping) -> str | None:
    """The sha256 of the image's src, or None when kvm_image itself must look.

    None for a relative src (kvm_image's action finds it in the role's and play's files/, which a
    filter cannot), a src that is not a regular file, a checksum that is not a sha256 or that src
    does not match: kvm_image then runs and says what is wrong, as always.
    """
    src = image["src"]
    if not os.path.isabs(src):
        return None
    try:
        if not stat.S_ISREG(os.stat(src).st_mode):
            return None
        sha = controller_sha256(src)[0]
        expected = parse_checksum(image.get("checksum"))
    except (OSError, KvmError):
        return None
    return None if expected and expected != sha else sha

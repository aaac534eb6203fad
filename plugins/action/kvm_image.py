# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""kvm_image on the controller: hash src (cached), probe the host, send the file, install it without overwrite.

The host side is the kvm_image module (module_utils/_image.py), run in steps: ``probe``, then, when
the image is missing and this is not check mode, the file goes over the connection's ``put_file``
straight to a staging name beside ``dest`` (the remote tmp dir may be on another file system) and
``install`` checks and links it into place. A staged file never outlives the task: ``install``
removes it in every case, and when the transfer or the install itself fails, ``cleanup`` does.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
import time

from ansible.errors import AnsibleError
from ansible.plugins.action import ActionBase
from ansible.utils.display import Display

from ansible_collections.virtops.kvm.plugins.module_utils._errors import KvmError
from ansible_collections.virtops.kvm.plugins.module_utils._image import ARGUMENT_SPEC, parse_checksum, staged_path
from ansible_collections.virtops.kvm.plugins.plugin_utils._image_digest import controller_sha256

MODULE = "virtops.kvm.kvm_image"
# What a task may set: the module's options without the internal ones (those are the action's).
TASK_SPEC = {k: dict(v) for k, v in ARGUMENT_SPEC.items() if not k.startswith("_")}
TASK_SPEC["dest"]["type"] = "str"  # a '~' is the managed host's, expanded there
display = Display()


class ActionModule(ActionBase):
    TRANSFERS_FILES = True

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        del tmp
        try:
            result.update(self._run(task_vars or {}))
        except (AnsibleError, KvmError) as exc:
            result.update(failed=True, msg=getattr(exc, "message", None) or str(exc))
        finally:
            self._remove_tmp_path(self._connection._shell.tmpdir)
        return result

    def _module(self, task_vars: dict, args: dict, **internal) -> dict:
        return self._execute_module(module_name=MODULE, module_args=dict(args, **internal), task_vars=task_vars)

    def _run(self, task_vars: dict) -> dict:
        args = self.validate_argument_spec(argument_spec=TASK_SPEC)[1]
        src = self._find_needle("files", args["src"])
        if not stat.S_ISREG(os.stat(src).st_mode):
            return dict(failed=True, msg=f"src {src} is not a regular file.")
        expected = parse_checksum(args.get("checksum"))
        sha, size = controller_sha256(src)[:2]
        if expected and sha != expected:
            return dict(
                failed=True,
                msg=f"src {src} has sha256 {sha}, not the expected {expected} (checksum): nothing was copied. "
                "Fix checksum, or the file.",
                src_sha256=sha,
            )
        probe = self._module(task_vars, args, _step="probe", _sha256=sha)
        needs_copy = probe.pop("needs_copy", False)
        if probe.get("failed"):
            return probe
        if not needs_copy or self._task.check_mode:
            return dict(probe, size=probe.get("size") or size)
        dest = probe["dest"]
        staged = staged_path(dest, secrets.token_hex(8))
        installed = None
        try:
            started = time.monotonic()
            try:
                with self._uncompressed():
                    self._connection.put_file(src, staged)
            except AnsibleError as exc:
                return dict(
                    failed=True,
                    msg=f"Sending {src} to {staged} failed: {exc} Nothing was put at {dest}. Check the space left "
                    "there, and that the connection's user (with become, not the become user) may write in that "
                    "directory.",
                    warnings=list(probe.get("warnings") or []),
                )
            seconds = max(time.monotonic() - started, 1e-6)
            installed = self._module(task_vars, args, dest=dest, _step="install", _sha256=sha, _staged=staged)
        finally:
            if installed is None or installed.get("failed"):
                self._cleanup(task_vars, args, dest, staged)
        if installed.get("copied") and not installed.get("failed"):
            transfer = dict(bytes=size, seconds=round(seconds, 3), mib_per_second=round(size / 1024**2 / seconds, 1))
            installed["transfer"] = transfer
        installed.pop("needs_copy", None)
        installed["warnings"] = list(probe.get("warnings") or []) + list(installed.get("warnings") or [])
        return installed

    @contextlib.contextmanager
    def _uncompressed(self):
        """The transfer without SSH compression (ansible-core's default ``ssh_args`` has ``-C``).

        zlib caps a transfer at ~40 MiB/s on a core, far below a disk or a network, and disk images
        gain little from it (measured on loopback: 512 MiB in 13.0 s with -C, 2.1 s without). With
        ControlPersist the master connection fixes compression for every session, so the copy gets
        a master of its own (ControlPath suffix ``-raw``) whose ssh_args lack ``-C``. Other
        connection plugins, and ssh_args without ``-C``, are left as they are.
        """
        conn = self._connection
        try:
            ssh_args = conn.get_option("ssh_args") if conn.transport == "ssh" else None
        except KeyError:
            ssh_args = None
        words = (ssh_args or "").split()
        if "-C" not in words:
            yield
            return
        saved = {k: conn.get_option(k) for k in ("ssh_args", "control_path")}
        conn.set_option("ssh_args", " ".join(w for w in words if w != "-C"))
        conn.set_option("control_path", (saved["control_path"] or "%(directory)s/%%C") + "-raw")
        try:
            yield
        finally:
            for key, value in saved.items():
                conn.set_option(key, value)

    def _cleanup(self, task_vars: dict, args: dict, dest: str, staged: str) -> None:
        """Remove the staged file; a failure here is a warning, the first error is the one reported."""
        try:
            done = self._module(task_vars, args, dest=dest, _step="cleanup", _staged=staged)
        except AnsibleError as exc:
            done = dict(failed=True, msg=str(exc))
        if done.get("failed"):
            display.warning(f"kvm_image could not remove the partial copy {staged}: {done.get('msg')}")

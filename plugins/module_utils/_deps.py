# Private to the virtops.kvm collection: not a public API, may change without notice.
"""Gated imports of the optional libraries: libvirt, lxml and guestfs.

Each is imported once (guestfs only when a run needs it); a missing one keeps its
traceback so the module can fail with missing_required_lib() and a hint on how to
install it.
"""

from __future__ import annotations

import traceback

from ansible.module_utils.basic import missing_required_lib

try:
    import libvirt  # pylint: disable=unused-import

    LIBVIRT_IMPORT_ERROR = None
except ImportError:
    libvirt = None
    LIBVIRT_IMPORT_ERROR = traceback.format_exc()

try:
    from lxml import etree  # pylint: disable=unused-import

    LXML_IMPORT_ERROR = None
except ImportError:
    etree = None
    LXML_IMPORT_ERROR = traceback.format_exc()

# guestfs is imported on first use (``_deps.guestfs``): only kvm_guestfs needs it, and its
# import costs every other module's run ~30 ms.
_LAZY: dict = {}


def _guestfs() -> tuple:
    """(the guestfs module or None, the import traceback or None), imported once."""
    if "guestfs" not in _LAZY:
        try:
            import guestfs  # pylint: disable=import-outside-toplevel

            _LAZY["guestfs"] = (guestfs, None)
        except ImportError:
            _LAZY["guestfs"] = (None, traceback.format_exc())
    return _LAZY["guestfs"]


def __getattr__(name: str):
    if name == "guestfs":
        return _guestfs()[0]
    if name == "GUESTFS_IMPORT_ERROR":
        return _guestfs()[1]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_LIBS = {
    "libvirt": (
        "libvirt-python",
        lambda: LIBVIRT_IMPORT_ERROR,
        "Install python3-libvirt (Debian/Ubuntu), python3-libvirt (Fedora/RHEL) "
        "or 'pip install libvirt-python' on the managed host, or run virtops.kvm.kvm_host "
        "with python_bindings=true.",
    ),
    "lxml": (
        "lxml",
        lambda: LXML_IMPORT_ERROR,
        "Install python3-lxml or 'pip install lxml' on the managed host.",
    ),
    "guestfs": (
        "guestfs (libguestfs Python binding)",
        lambda: _guestfs()[1],
        "Install python3-guestfs (Debian/Ubuntu) or python3-libguestfs (Fedora/RHEL) on the "
        "managed host; it is not on PyPI, so a virtualenv needs --system-site-packages.",
    ),
}


def install_hint(name: str) -> str:
    """How to install the optional library ``name`` on the managed host."""
    return _LIBS[name][2]


def require(module, *names: str) -> None:
    """Fail the module, with an install hint, if any named library is missing."""
    for name in names:
        lib, error, hint = _LIBS[name]
        tb = error()
        if tb is not None:
            module.fail_json(msg=f"{missing_required_lib(lib)} {hint}", exception=tb)

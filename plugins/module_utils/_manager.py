# Private to the virtops.kvm collection: not a public API, may change without notice.
"""The one contract every manager keeps, and the one runner every module calls.

A manager gets its options, a lazily opened libvirt ``Connection`` and the
check-mode flag (plus ``runner`` for external programs, which a module takes
from ``module.run_command`` and a test or benchmark gives, and ``which`` to find
them); ``run()`` returns the result dict (``changed``,
``diff`` and the module's return values) and leaves its warnings in
``self.warnings``.

The options' defaults live in the manager's argument spec only: the module
builds its AnsibleModule from ``module_kwargs()``, and a manager made without
Ansible (unit tests, benchmarks) fills the options it was not given from the
same spec.

``run_module()`` is the only place where a run ends: it emits the warnings
(also those gathered before a failure), drops the diff when diff mode is off,
closes the connection, and turns every collection error, and any stray
``libvirtError`` or ``OSError``, into ``fail_json`` with a message and a hint.
"""

from __future__ import annotations

import copy
import shutil
from collections.abc import Callable

from ansible_collections.virtops.kvm.plugins.module_utils import _deps
from ansible_collections.virtops.kvm.plugins.module_utils._connection import (
    CONNECTION_ARGS,
    GENERIC_CALL,
    Connection,
    call,
    libvirt_failed,
)
from ansible_collections.virtops.kvm.plugins.module_utils._errors import InvalidInput, KvmError, LibvirtFailed
from ansible_collections.virtops.kvm.plugins.module_utils._validate import numbers

# runner(argv, env=None) -> (rc, stdout, stderr); never a shell.
Runner = Callable[..., tuple]
Which = Callable[[str], "str | None"]


def no_runner(argv: list, env: dict | None = None) -> tuple:
    """The runner of a manager made without one: modules pass module.run_command, tests and benches their own."""
    raise KvmError(f"{argv[0]} cannot run: this manager was made without a runner.")


def with_defaults(spec: dict, params: dict) -> dict:
    """``params`` completed the way AnsibleModule completes them: defaults and fallbacks from ``spec``."""
    out = dict(params)
    for name, opt in spec.items():
        if name in out:
            continue
        if "default" in opt:
            out[name] = copy.deepcopy(opt["default"])
        elif "fallback" in opt:
            fn, args = opt["fallback"][0], opt["fallback"][1] if len(opt["fallback"]) > 1 else []
            out[name] = fn(*args)
        else:
            out[name] = None
    return out


class Manager:
    """Options, connection and check mode in; a result with warnings and diff out."""

    #: the module's options (without ``uri``, which every module gets from CONNECTION_ARGS)
    ARGUMENT_SPEC: dict = {}
    #: the other AnsibleModule arguments: mutually_exclusive, required_if, ...
    MODULE_OPTIONS: dict = {}
    #: the optional libraries a run needs (see ``_deps``); ``needs()`` may narrow it per run
    LIBRARIES: tuple = ("libvirt", "lxml")
    #: whether a read-only libvirt connection is enough
    READONLY = False
    #: whether the module talks to libvirt at all; kvm_image does not, and so has no ``uri`` option
    #: (its Connection is made but never opened, and closing it does nothing)
    CONNECTED = True
    #: the manager's own test seams (keyword arguments, e.g. a clock or a fake file tree) and their defaults
    SEAMS: dict = {}
    #: bounds of numeric options that differ from _validate.LIMITS: ``{option: (low, high, unit)}``
    LIMITS: dict = {}

    def __init__(
        self,
        params: dict,
        connection: Connection | None = None,
        check_mode: bool = False,
        *,
        runner: Runner | None = None,
        which: Which | None = None,
        **seams,
    ):
        unknown = sorted(set(seams) - set(self.SEAMS))
        if unknown:
            raise TypeError(f"{type(self).__name__} got unknown keyword argument(s): {', '.join(unknown)}")
        for name, default in self.SEAMS.items():
            setattr(self, name, seams.get(name, default))
        self.p = with_defaults(self.argument_spec(), params)
        numbers(self.argument_spec(), self.p, self.LIMITS)  # every timeout and count bounded, before any work
        self.connection = connection if connection is not None else Connection(self.p.get("uri"), self.READONLY)
        self.check_mode = check_mode
        self.runner = runner or no_runner
        self.which = which or shutil.which
        self.warnings: list[str] = []
        self.changes: list[str] = []

    @classmethod
    def argument_spec(cls) -> dict:
        return dict(cls.ARGUMENT_SPEC, **CONNECTION_ARGS) if cls.CONNECTED else dict(cls.ARGUMENT_SPEC)

    @classmethod
    def module_kwargs(cls) -> dict:
        """Everything AnsibleModule needs, from the one spec."""
        return dict(argument_spec=cls.argument_spec(), supports_check_mode=True, **cls.MODULE_OPTIONS)

    @classmethod
    def needs(cls, params: dict) -> tuple:
        return cls.LIBRARIES

    @property
    def conn(self):
        """The open virConnect (opened on first use)."""
        return self.connection.conn

    @property
    def uri(self) -> str:
        return self.connection.uri

    def warn(self, message: str) -> None:
        self.warnings.append(message)

    def note(self, change: str) -> bool:
        """Record a change; True when it is to be carried out (not in check mode)."""
        self.changes.append(change)
        return not self.check_mode

    def run(self) -> dict:
        raise NotImplementedError

    def compose(self, manager_cls: type[Manager], params: dict, **seams) -> Manager:
        """Another manager, run inside this one: its options checked as its module would check them.

        It shares this manager's connection, check mode, runner and ``which``, and gets the seams of
        this manager that it declares too (a clock, a lock path, a fake handle factory), overridden by
        ``seams``. Its failures are its own typed errors.
        """
        given = {k: getattr(self, k) for k in manager_cls.SEAMS if k in self.SEAMS}
        given.update(seams)
        checked = validated(manager_cls, dict(params, uri=self.connection.uri) if manager_cls.CONNECTED else params)
        return manager_cls(checked, self.connection, self.check_mode, runner=self.runner, which=self.which, **given)


def validated(manager_cls: type[Manager], params: dict) -> dict:
    """``params`` checked, converted and completed against the manager's spec as AnsibleModule does it."""
    from ansible.module_utils.common.arg_spec import ArgumentSpecValidator  # pylint: disable=import-outside-toplevel

    kwargs = {k: v for k, v in manager_cls.MODULE_OPTIONS.items() if k != "supports_check_mode"}
    given = {k: v for k, v in params.items() if v is not None}  # None is an option not given, as with omit
    outcome = ArgumentSpecValidator(manager_cls.argument_spec(), **kwargs).validate(given)
    if outcome.error_messages:
        raise InvalidInput(
            f"{manager_cls.__name__} refused the options it was given: {'; '.join(outcome.error_messages)}.",
            hint="Fix the value the message names (it came from the task's options); nothing was changed by this step.",
        )
    return outcome.validated_parameters


class DomainJournal:
    """One run's work on one domain: what changed so far, and libvirt calls that name the action on failure.

    kvm_domain's and kvm_snapshot's run contexts build on it.
    """

    def __init__(self, connection: Connection, name: str, check_mode: bool):
        self.connection = connection
        self.name = name
        self.check_mode = check_mode
        self.changes: list[str] = []

    @property
    def conn(self):
        return self.connection.conn

    @property
    def changed(self) -> bool:
        return bool(self.changes)

    def note(self, what: str) -> None:
        """Record a change (made, or in check mode to be made)."""
        self.changes.append(what)

    def call(self, what: str, fn, *args):
        """Run a libvirt call, translating its error into LibvirtFailed naming the action and the domain."""
        return call(f"{what} of domain {self.name}", fn, *args)


def _stray_types() -> tuple:
    """The exceptions a manager may let through that still deserve a typed failure."""
    return (OSError,) + ((_deps.libvirt.libvirtError,) if _deps.libvirt is not None else ())


def _typed(exc: BaseException) -> KvmError:
    """The typed error for an OSError or libvirtError no manager translated."""
    if isinstance(exc, OSError):
        where = f" ({exc.filename})" if exc.filename else ""
        return KvmError(
            f"{exc.strerror or exc}{where}.",
            hint="Check that the path exists and that the task runs with the rights to use it (become: true).",
        )
    err = libvirt_failed(exc, GENERIC_CALL)
    if isinstance(err, LibvirtFailed):  # a lost daemon (ConnectionFailed) keeps its own advice
        err.hint = "This is libvirt's own message; if it does not say what to fix, please report it with the task."
    return err


def run_module(module, manager_cls: type[Manager]) -> None:
    """Run one manager for ``module`` and exit with its result (or its typed failure)."""
    _deps.require(module, *manager_cls.needs(module.params))

    def runner(argv: list, env: dict | None = None) -> tuple:
        return module.run_command(argv, environ_update=env or {})

    connection = Connection(module.params.get("uri"), readonly=manager_cls.READONLY)
    manager = None
    failure: KvmError | None = None
    result: dict = {}
    try:
        manager = manager_cls(module.params, connection, module.check_mode, runner=runner, which=module.get_bin_path)
        result = manager.run()
    except KvmError as exc:
        failure = exc
    except _stray_types() as exc:
        failure = _typed(exc)
    finally:
        connection.close()
    for warning in [*(manager.warnings if manager else []), *result.pop("warnings", [])]:
        module.warn(warning)
    if failure is not None:
        module.fail_json(msg=failure.message, error=type(failure).__name__, **failure.details)
    if not module._diff:  # pylint: disable=protected-access
        result.pop("diff", None)
    module.exit_json(**result)

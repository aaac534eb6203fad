# Private to the virtops.kvm collection: not a public API, may change without notice.
"""A clone's cloud-init NoCloud seed: its documents, the ISO 9660 volume 'cidata' and its CD-ROM.

cloud-init's NoCloud datasource reads user-data, meta-data and network-config from a
volume labelled ``cidata``. Each clone gets its own ISO beside its disk, made with xorriso
(or genisoimage/mkisofs), attached read-only, and read back by the small ISO reader here.
Documents given as dicts are written as JSON, which is YAML too: hosts may lack PyYAML.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import struct
import tempfile

from ansible_collections.virtops.kvm.plugins.module_utils import _deps
from ansible_collections.virtops.kvm.plugins.module_utils._errors import Conflict, InvalidInput, StorageError

SEED_KEYS = ("user_data", "meta_data", "network_config")
SEED_SUFFIX = "-cidata.iso"
LABEL = "cidata"
# The programs that make the ISO, in order of preference (xorriso is the declared one).
XORRISO = "xorriso"
GENISOIMAGE = "genisoimage"
MKISOFS = "mkisofs"

_DOC_NAME = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
_SECTOR = 2048
_MAX_DOC = 1 << 20  # a seed document over 1 MiB is not one this collection wrote
_JOLIET = (b"%/@", b"%/C", b"%/E")


def _json(value, what: str) -> str:
    try:
        return json.dumps(value, sort_keys=True, indent=2, ensure_ascii=False) + "\n"
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"{what} cannot be written as JSON/YAML: {exc}.") from None


def check_cloud_init(value, where: str) -> dict | None:
    """The normalized seed settings of ``value`` (user_data and network_config as text); None when not given.

    ``{}`` asks for a seed with the defaults (instance-id and local-hostname), as the docs say.
    """
    if value is None:
        return None
    allowed = ", ".join(SEED_KEYS)
    if not isinstance(value, dict):
        raise InvalidInput(f"{where} must be a dict with the keys {allowed}, not {type(value).__name__}.")
    unknown = sorted(str(k) for k in value if k not in SEED_KEYS)
    if unknown:
        raise InvalidInput(f"{where} has unknown keys {', '.join(unknown)}.", hint=f"Allowed keys: {allowed}.")
    out: dict = {}
    user_data = value.get("user_data")
    if isinstance(user_data, dict):
        out["user_data"] = "#cloud-config\n" + _json(user_data, f"user_data of {where}")
    elif isinstance(user_data, str):
        if not user_data.startswith("#"):
            raise InvalidInput(
                f"user_data of {where} does not start with '#', so cloud-init would not know what it is.",
                hint="Start it with '#cloud-config' (YAML) or '#!' (a script), or give user_data as a dict.",
            )
        out["user_data"] = user_data
    elif user_data is not None:
        raise InvalidInput(f"user_data of {where} must be a dict or a string, not {type(user_data).__name__}.")
    meta_data = value.get("meta_data")
    if isinstance(meta_data, dict):
        _json(meta_data, f"meta_data of {where}")
        out["meta_data"] = dict(meta_data)
    elif meta_data is not None:
        raise InvalidInput(f"meta_data of {where} must be a dict, not {type(meta_data).__name__}.")
    network = value.get("network_config")
    if isinstance(network, dict):
        out["network_config"] = _json(network, f"network_config of {where}")
    elif isinstance(network, str) and network.strip():
        out["network_config"] = network
    elif network is not None:
        raise InvalidInput(f"network_config of {where} must be a dict or a non-empty string.")
    return out


def merge_cloud_init(task_level: dict | None, clone_level: dict | None) -> dict | None:
    """Normalized task-level settings overridden by a clone's own (meta_data merged key by key, clone wins).

    None when neither level asks for a seed; ``{}`` (a seed with the defaults) when one asks with no settings.
    """
    if task_level is None and clone_level is None:
        return None
    out = dict(task_level or {})
    for key, value in (clone_level or {}).items():
        if key == "meta_data":
            value = {**out.get("meta_data", {}), **value}
        out[key] = value
    return out


def seed_documents(clone: str, uuid: str, hostname: str, cfg: dict) -> dict[str, bytes]:
    """The files of clone ``clone``'s seed: meta-data (instance-id, local-hostname), user-data, network-config."""
    meta = {"instance-id": uuid, "local-hostname": hostname, **(cfg.get("meta_data") or {})}
    docs = {
        "meta-data": _json(meta, f"meta_data of clone {clone!r}"),
        "user-data": cfg.get("user_data") or "#cloud-config\n{}\n",
    }
    if cfg.get("network_config"):
        docs["network-config"] = cfg["network_config"]
    return {name: text.encode("utf-8") for name, text in sorted(docs.items())}


def seed_path(dest_dir: str, clone: str) -> str:
    """Where clone ``clone``'s seed lives: beside its disk."""
    return os.path.join(dest_dir, f"{clone}{SEED_SUFFIX}")


def iso_command(which) -> list[str]:
    """The argv prefix of the first ISO 9660 maker installed: xorriso -as mkisofs, genisoimage, mkisofs."""
    for path, emulation in ((which(XORRISO), ["-as", "mkisofs"]), (which(GENISOIMAGE), []), (which(MKISOFS), [])):
        if path:
            return [path, *emulation]
    raise StorageError(
        "No ISO 9660 maker (xorriso, genisoimage or mkisofs) is installed, so the cloud-init seed cannot be made.",
        hint="Install the package xorriso (Debian/Ubuntu, RHEL/Fedora and SUSE all call it that) on the host "
        "where kvm_clone runs, or run virtops.kvm.kvm_host.",
    )


def _place(tmp_iso: str, path: str) -> None:
    """Give ``tmp_iso`` the name ``path`` unless something has it already (never overwrite)."""
    try:
        try:
            os.link(tmp_iso, path)
            return
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV, errno.EMLINK):
                raise
        with open(path, "xb") as dst:  # no hard links on this file system: copy into a new file
            try:
                with open(tmp_iso, "rb") as src:
                    shutil.copyfileobj(src, dst)
            except OSError:
                os.unlink(path)
                raise
        os.chmod(path, 0o644)
    except FileExistsError:
        raise Conflict(f"{path} appeared while the cloud-init seed was made; it was left alone.") from None


def build_seed(runner, which, path: str, documents: dict[str, bytes], replace: bool = False) -> None:
    """Write ``documents`` as the ISO 9660 volume 'cidata' at ``path``, all or nothing.

    A file at ``path`` is never overwritten, unless ``replace`` (kvm_vm rewriting a seed it made, checked by the
    caller): the new one is then renamed over it atomically (a reader sees the old seed or the new, whole).
    """
    if os.path.lexists(path) and not replace:
        raise Conflict(
            f"{path} exists and kvm_clone did not make it in this run; it was left alone.",
            hint="Move or remove it, or give the clone another name or dest_dir.",
        )
    for name in documents:
        if not _DOC_NAME.match(name):
            raise InvalidInput(f"{name!r} is not a seed document name (user-data, meta-data, network-config).")
    prefix = iso_command(which)
    directory = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        # named after the seed, so a rerun finds it if this run is killed here (journal.temp_paths)
        tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.tmp-", dir=directory)
        docs = os.path.join(tmp, "seed")
        os.mkdir(docs)
        for name, data in sorted(documents.items()):
            with open(os.path.join(docs, name), "wb") as f:
                f.write(data)
        tmp_iso = os.path.join(tmp, "cidata.iso")
        # The documents directory is given whole (its files land at the ISO's root): no graft
        # points, so no '=' or '\' in the path needs escaping.
        argv = [*prefix, "-output", tmp_iso, "-volid", LABEL, "-joliet", "-rock", "-quiet", docs]
        rc, _out, err = runner(argv)
        if rc != 0 or not os.path.isfile(tmp_iso):
            tool, why = os.path.basename(prefix[0]), (err or "").strip() or "no error output"
            raise StorageError(f"{tool} could not make the cloud-init seed {path} (rc={rc}): {why}")
        os.chmod(tmp_iso, 0o644)
        if replace:
            os.replace(tmp_iso, path)
        else:
            _place(tmp_iso, path)
    except OSError as exc:
        raise StorageError(
            f"Cannot write the cloud-init seed in {directory}: {exc.strerror or exc}.",
            hint="Check the directory's free space and permissions.",
        ) from None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _extent(record: bytes) -> tuple[int, int]:
    """(first sector, length in bytes) of a directory record (both-endian fields; little-endian half)."""
    return struct.unpack_from("<I", record, 2)[0], struct.unpack_from("<I", record, 10)[0]


def _records(data: bytes):
    """The directory records of a directory extent; a zero length byte pads to the next sector."""
    i = 0
    while i < len(data):
        n = data[i]
        if n and (n < 34 or i + n > len(data)):
            raise ValueError("bad directory record")
        if n:
            yield data[i : i + n]
        i = i + n if n else (i // _SECTOR + 1) * _SECTOR


def _name(record: bytes, joliet: bool) -> str:
    """A file's name: Joliet's UCS-2, else Rock Ridge's NM entries, else the plain ISO name, lower-cased."""
    raw = record[33 : 33 + record[32]]
    if joliet:
        return raw.decode("utf-16-be").split(";")[0]
    j, nm = 33 + len(raw) + (1 - len(raw) % 2), b""
    while j + 4 <= len(record) and record[j + 2] >= 4:
        if record[j : j + 2] == b"NM":
            nm += record[j + 5 : j + record[j + 2]]
        j += record[j + 2]
    if nm:
        return nm.decode("utf-8")
    return raw.decode("ascii").split(";")[0].rstrip(".").lower()


def read_seed(path: str) -> tuple[str, dict[str, bytes]]:
    """(volume id, {file name: bytes}) of the flat ISO 9660 volume at ``path``; a StorageError if it is none."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size

            def read(sector: int, length: int) -> bytes:
                if length > _MAX_DOC or sector * _SECTOR + length > size:
                    raise ValueError("extent outside the file")
                f.seek(sector * _SECTOR)
                return f.read(length)

            label, roots = None, {}
            for sector in range(16, 48):
                vd = read(sector, _SECTOR)
                if vd[1:6] != b"CD001" or vd[0] == 255:
                    break
                if vd[0] == 1 and label is None:
                    label, roots[False] = vd[40:72].decode("ascii").rstrip(" "), vd[156:190]
                elif vd[0] == 2 and vd[88:91] in _JOLIET:
                    roots.setdefault(True, vd[156:190])
            if label is None:
                raise ValueError("no primary volume descriptor")
            joliet = True in roots
            files = {}
            for record in _records(read(*_extent(roots[joliet]))):
                if record[25] & 2 or record[33 : 33 + record[32]] in (b"\0", b"\1"):
                    continue  # a directory, '.' or '..': a seed is flat
                files[_name(record, joliet)] = read(*_extent(record))
    except OSError as exc:
        raise StorageError(f"Cannot read the cloud-init seed {path}: {exc.strerror or exc}.") from None
    except (ValueError, IndexError, struct.error) as exc:  # UnicodeDecodeError is a ValueError
        raise StorageError(f"{path} is not an ISO 9660 cloud-init seed ({exc}).") from None
    return label, files


def _bus(root) -> str:
    """The bus virt-install gives a CD-ROM on this machine type: IDE on pc, SATA on q35, SCSI on Arm's virt."""
    os_type = root.find("os/type")
    machine = os_type.get("machine", "") if os_type is not None else ""
    arch = os_type.get("arch", "") if os_type is not None else ""
    if "q35" in machine:
        return "sata"
    return "scsi" if machine.startswith("virt") and (arch.startswith("arm") or arch == "aarch64") else "ide"


def attach_cdrom(root, path: str) -> str:
    """Add the seed ``path`` as a read-only CD-ROM to domain ``root``; return its target device name."""
    bus = _bus(root)
    used = {t.get("dev") for t in root.findall("devices/disk/target")}
    if bus == "ide":  # what virt-install picks first: the secondary channel's master
        candidates = ["hdc", "hdd", "hdb", "hda"]
    else:
        candidates = [f"sd{chr(c)}" for c in range(ord("a"), ord("z") + 1)]
    free = [dev for dev in candidates if dev not in used]
    if not free:
        raise Conflict(
            f"The domain has no free {bus} target for the cloud-init seed CD-ROM.",
            hint=f"Free one of {', '.join(candidates)} in the template.",
        )
    devices = root.find("devices")
    devices = devices if devices is not None else _deps.etree.SubElement(root, "devices")
    disk = _deps.etree.Element("disk", type="file", device="cdrom")
    _deps.etree.SubElement(disk, "driver", name="qemu", type="raw")
    _deps.etree.SubElement(disk, "source", file=path)
    _deps.etree.SubElement(disk, "target", dev=free[0], bus=bus)
    _deps.etree.SubElement(disk, "readonly")
    existing = devices.findall("disk")
    if existing:
        existing[-1].addnext(disk)
    else:
        devices.insert(0, disk)
    return free[0]


def seed_disks(root) -> list[str]:
    """The files of the domain's CD-ROMs that are cloud-init seeds made here (``*-cidata.iso``)."""
    out = []
    for disk in root.findall("devices/disk[@device='cdrom']"):
        src = disk.find("source")
        path = src.get("file") if src is not None else None
        if path and path.endswith(SEED_SUFFIX):
            out.append(path)
    return out

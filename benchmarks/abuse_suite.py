"""Fault-and-abuse suite for the watcher: hostile folders and files, one live watcher, a syscall trace.

Usage:

    python benchmarks/abuse_suite.py                       # strace if installed, else a tree audit
    python benchmarks/abuse_suite.py --json /tmp/abuse.json --keep
    python benchmarks/abuse_suite.py --no-trace            # force the tree-audit fallback

A temporary tree holds one watch root (``incoming/``), the state folder (``state/``, with TMPDIR inside it) and an
``outside/`` folder (a NIfTI and a DICOM series that links point to). The root receives good series (NIfTI and
DICOM) and abuse probes: folder symlinks to ``outside/`` (one before the start, one while the watcher runs), a
file symlink inside a DICOM series pointing to an outside slice of another series, ``loop -> .``, a Latin-1
byte-named file and folder, colliding names (``T1 post.nii.gz`` / ``T1_post.nii.gz``, ``a.nii`` / ``a.nii.gz``),
a truncated ``.nii.gz``, a NIfTI header promising 4096^3 voxels, a ``.nii.gz`` followed by 200000 empty gzip
members, a DICOM series whose SeriesDescription and PatientName hold CR/LF, ANSI escapes, ``../`` and a
backslash, a non-image file, and an output-lookalike folder ``x.edgeseg/`` holding a series.

``edgeseg watch`` (demo bundle, polling observer, 2 s quiet period) runs as a child process under
``strace -f -e trace=%file,%network,fchdir`` (Debian ``strace``), started after the pre-start probes are staged;
the live probes (a folder link to ``outside/``, then a good series) arrive once the first result is out; when
every series-bearing probe has an outcome and nothing changed for a while, the watcher gets SIGTERM.

Reported: probes run; inputs modified (sha256 of every input file, and the target of every link, before and after);
writes outside the roots and the state folder (from the trace: open/openat/creat with write flags, mkdir, rename,
unlink, rmdir, link, symlink, truncate, chmod/chown, utime, mknod, xattr targets, resolved to absolute paths
through each call's directory fd and the parent's real path; ``/dev/null`` and ``/proc`` are not files); opens of
anything in ``outside/``; writes inside a root to names that are not edgeseg outputs; series dropped (a
series-bearing probe with neither a result folder nor an error file); network attempts (socket, connect, bind,
send* on AF_INET/AF_INET6 sockets); log lines that do not start with a timestamp (forged) or hold an escape byte.
The tree audit (every entry of the temporary tree before and after) always runs; without strace it is the only
write check, together with new entries in $HOME, /tmp and /dev/shm (which other processes may also have made).

PYTHONDONTWRITEBYTECODE=1 is set for the watcher: the interpreter's own bytecode cache of an editable install
is not edgeseg writing (the frozen build has none). Any EDGESEG_* variable of this shell is removed.
"""
from __future__ import annotations

import argparse
import codecs
import gzip
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, print_table, write_json  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULT_SUFFIX = b".edgeseg"
ERROR_SUFFIX = b".edgeseg-error.json"
GZIP_EMPTY_MEMBERS = 200_000
LOG_LINE = re.compile(rb"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d |  )")


def _is_output(name: bytes) -> bool:
    if name.endswith(RESULT_SUFFIX) or name.endswith(ERROR_SUFFIX):
        return True
    return name.startswith(b".") and (b".edgeseg.partial-" in name or b".edgeseg.old-" in name
                                      or b".edgeseg-error.json.partial-" in name)


# ---------------------------------------------------------------------------------------------------- probes


@dataclass
class Probe:
    name: str
    what: str
    folder: bytes  # relative to the root ("" = the root itself)
    expect: str  # "result" | "error" | "result_or_error" | "error_or_nothing" | "nothing"
    series: int = 1  # series expected in the folder (results + errors)
    live: bool = False
    good: bool = False  # a valid series that must be segmented
    observed: str = ""
    ok: bool | None = None
    detail: dict[str, Any] = field(default_factory=dict)


def _write_dicom(source: Path, folder: bytes, description: str) -> list[Path]:
    from edgeseg.demo.dicom_series import write_dicom_series

    return list(write_dicom_series(source, os.fsdecode(folder), series_description=description))


def _copy(src: Path, dst: bytes) -> None:
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    shutil.copyfile(src, dst)


def stage_before(root: bytes, outside: bytes, mri: Path) -> list[Probe]:
    """Everything present before the watcher starts."""
    import nibabel as nib
    import pydicom

    J = os.path.join
    probes: list[Probe] = []

    # outside the roots: what the links point to
    _copy(mri, J(outside, b"outside_scan.nii.gz"))
    secret = _write_dicom(mri, J(outside, b"secret"), "outside secret series")

    _copy(mri, J(root, b"good_nifti", b"scan.nii.gz"))
    probes.append(Probe("good_nifti", "good NIfTI series", b"good_nifti", "result", good=True))
    _write_dicom(mri, J(root, b"good_dicom"), "good dicom")
    probes.append(Probe("good_dicom", "good DICOM series (20 slices)", b"good_dicom", "result", good=True))

    os.symlink(outside, J(root, b"link_before"))
    probes.append(Probe("link_before", "folder symlink -> outside/ (before start)", b"", "nothing", series=0))
    files = _write_dicom(mri, J(root, b"dicom_with_link"), "dicom with a link")
    os.symlink(os.fsencode(secret[0]), J(root, b"dicom_with_link", b"zz_outside_slice"))
    probes.append(Probe("file_link", "DICOM series + file symlink to an outside slice of another series",
                        b"dicom_with_link", "result", good=True, detail={"slices": len(files)}))
    os.symlink(b".", J(root, b"loop"))
    probes.append(Probe("loop", "ln -s . loop (in the root)", b"", "nothing", series=0))
    os.makedirs(J(root, b"loops"))
    os.symlink(b".", J(root, b"loops", b"a"))
    os.symlink(b".", J(root, b"loops", b"b"))
    probes.append(Probe("loop_pair", "two links to . in one folder (loops/a, loops/b)", b"loops", "nothing",
                        series=0))

    _copy(mri, J(root, b"latin1_file", b"caf\xe9_scan.nii.gz"))
    probes.append(Probe("latin1_file", "Latin-1 byte-named file caf\\xe9_scan.nii.gz", b"latin1_file", "result",
                        good=True))
    _write_dicom(mri, J(root, b"s\xe9rie_dicom"), "latin1 folder")
    probes.append(Probe("latin1_folder", "Latin-1 byte-named folder s\\xe9rie_dicom/ (DICOM)", b"s\xe9rie_dicom",
                        "result", good=True))

    _copy(mri, J(root, b"collide_space", b"T1 post.nii.gz"))
    _copy(mri, J(root, b"collide_space", b"T1_post.nii.gz"))
    probes.append(Probe("collide_space", "'T1 post.nii.gz' + 'T1_post.nii.gz' in one folder", b"collide_space",
                        "result", series=2, good=True))
    _copy(mri, J(root, b"collide_ext", b"a.nii.gz"))
    img: Any = nib.load(str(mri))
    nib.save(img, os.fsdecode(J(root, b"collide_ext", b"a.nii")))
    probes.append(Probe("collide_ext", "'a.nii' + 'a.nii.gz' in one folder", b"collide_ext", "result", series=2,
                        good=True))

    data = mri.read_bytes()
    os.makedirs(J(root, b"truncated"))
    Path(os.fsdecode(J(root, b"truncated", b"half.nii.gz"))).write_bytes(data[: len(data) // 2])
    probes.append(Probe("truncated_gz", "truncated .nii.gz (first half)", b"truncated", "error"))

    hdr = nib.Nifti1Header()
    hdr.set_data_dtype("int16")
    hdr.set_data_shape((4096, 4096, 4096))
    hdr.set_zooms((1.0, 1.0, 1.0))
    hdr.set_qform(hdr.get_base_affine(), 1)
    hdr["vox_offset"] = 352
    os.makedirs(J(root, b"huge_header"))
    with gzip.open(os.fsdecode(J(root, b"huge_header", b"huge.nii.gz")), "wb") as fh:
        fh.write(hdr.binaryblock + b"\0" * 4 + b"\0" * 65536)
    probes.append(Probe("huge_header", "NIfTI header promising 4096^3 int16 (64 KB of data)", b"huge_header",
                        "error"))

    os.makedirs(J(root, b"gzip_members"))
    empty = gzip.compress(b"", mtime=0)
    Path(os.fsdecode(J(root, b"gzip_members", b"scan.nii.gz"))).write_bytes(data + empty * GZIP_EMPTY_MEMBERS)
    probes.append(Probe("gzip_members", f"valid .nii.gz + {GZIP_EMPTY_MEMBERS} empty gzip members "
                        f"({len(empty) * GZIP_EMPTY_MEMBERS // 1000} KB)", b"gzip_members", "result_or_error"))

    evil_desc = "ev\r\n2030-01-01T00:00:00 ERROR x: forged\x1b[31m ../../outside/p \\ b"  # 64 chars
    evil_pn = "EVIL\\NAME\r\n\x1b[2J../..^X"
    files = _write_dicom(mri, J(root, b"dicom_control"), "placeholder")
    for f in files:
        ds = pydicom.dcmread(f)
        ds.SeriesDescription = evil_desc
        ds.PatientName = evil_pn
        ds.save_as(f)
    probes.append(Probe("dicom_control", "DICOM: SeriesDescription/PatientName with CR/LF, ANSI escapes, ../, "
                        "backslash", b"dicom_control", "result", good=True))

    os.makedirs(J(root, b"not_image"))
    Path(os.fsdecode(J(root, b"not_image", b"notes.bin"))).write_bytes(os.urandom(4096))
    probes.append(Probe("non_image", "non-image file notes.bin (4 KB random)", b"not_image", "error_or_nothing"))

    _copy(mri, J(root, b"x.edgeseg", b"scan.nii.gz"))
    probes.append(Probe("lookalike", "output-lookalike folder x.edgeseg/ holding a series", b"x.edgeseg",
                        "nothing", series=0))
    return probes


def stage_live(root: bytes, outside: bytes, mri: Path) -> list[Probe]:
    """What arrives while the watcher runs: a new folder link to outside/, then a good series."""
    os.symlink(outside, os.path.join(root, b"link_live"))
    time.sleep(1.0)
    _copy(mri, os.path.join(root, b"late_nifti", b"late.nii.gz"))
    return [Probe("link_live", "folder symlink -> outside/ (created while watching)", b"", "nothing", series=0,
                  live=True),
            Probe("late_nifti", "good NIfTI arriving after the live link (watcher still works)", b"late_nifti",
                  "result", live=True, good=True)]


# --------------------------------------------------------------------------------------------- tree snapshots


def _sha256(path: bytes) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def snapshot(top: bytes, hash_files: bool = True, skip: tuple[bytes, ...] = ()) -> dict[bytes, tuple]:
    """{path: ("file", size, mtime_ns, sha256) | ("dir",) | ("link", target)} of everything below ``top``, links
    not followed."""
    out: dict[bytes, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(top, followlinks=False):
        dirnames[:] = [d for d in dirnames if os.path.join(dirpath, d) not in skip]
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            if os.path.islink(p):
                out[p] = ("link", os.readlink(p))
            elif os.path.isdir(p):
                out[p] = ("dir",)
            else:
                out[p] = ("file", st.st_size, st.st_mtime_ns, _sha256(p) if hash_files else None)
    return out


def _under(path: bytes, folder: bytes) -> bool:
    return path == folder or path.startswith(folder.rstrip(b"/") + b"/")


# ------------------------------------------------------------------------------------------------ the trace

_WRITE_CALLS: dict[str, list[tuple[int | None, int]]] = {
    "creat": [(None, 0)], "mkdir": [(None, 0)], "mkdirat": [(0, 1)], "rmdir": [(None, 0)],
    "unlink": [(None, 0)], "unlinkat": [(0, 1)], "rename": [(None, 0), (None, 1)],
    "renameat": [(0, 1), (2, 3)], "renameat2": [(0, 1), (2, 3)], "link": [(None, 1)], "linkat": [(2, 3)],
    "symlink": [(None, 1)], "symlinkat": [(1, 2)], "truncate": [(None, 0)], "chmod": [(None, 0)],
    "fchmodat": [(0, 1)], "fchmodat2": [(0, 1)], "chown": [(None, 0)], "lchown": [(None, 0)],
    "fchownat": [(0, 1)], "utime": [(None, 0)], "utimes": [(None, 0)], "utimensat": [(0, 1)],
    "futimesat": [(0, 1)], "mknod": [(None, 0)], "mknodat": [(0, 1)], "setxattr": [(None, 0)],
    "lsetxattr": [(None, 0)], "removexattr": [(None, 0)], "lremovexattr": [(None, 0)],
}
_OPEN_CALLS = {"open": (None, 0, 1), "openat": (0, 1, 2), "openat2": (0, 1, 2)}
_NET_CALLS = {"socket", "connect", "bind", "sendto", "sendmsg", "sendmmsg"}
_WRITE_FLAGS = re.compile(r"O_WRONLY|O_RDWR|O_CREAT|O_TRUNC|O_APPEND")
_LINE = re.compile(r"^(\d+) +(.*)$")
_CALL = re.compile(r"^(\w+)\((.*)$", re.S)
_RESUMED = re.compile(r"^<\.\.\. (\w+) resumed>(.*)$", re.S)
_DECOR = re.compile(r"^(?:AT_FDCWD|-?\d+)<(.*)>$", re.S)


def _unescape(text: str) -> bytes:
    """strace's C-style string (octal/hex escapes) -> the raw bytes."""
    return codecs.escape_decode(text.encode("latin-1", "backslashreplace"))[0]


def _split_call(rest: str) -> tuple[list[str], str]:
    """'a, "b", {c, d}) = 3</x>' -> (['a', '"b"', '{c, d}'], ' = 3</x>')."""
    args, cur, depth, i, n = [], [], 0, 0, len(rest)
    while i < n:
        c = rest[i]
        if c == '"':
            j = i + 1
            while j < n and rest[j] != '"':
                j += 2 if rest[j] == "\\" else 1
            cur.append(rest[i:j + 1])
            i = j + 1
            continue
        if c == "<" and cur and (cur[-1][-1:].isdigit() or "".join(cur).strip().endswith("AT_FDCWD")):
            j = i + 1  # a -y decoration: up to the '>' that ends the argument
            while j < n and not (rest[j] == ">" and (j + 1 == n or rest[j + 1] in ",)] ")):
                j += 1
            cur.append(rest[i:j + 1])
            i = j + 1
            continue
        if c in "([{":
            depth += 1
        elif c in ")]}":
            if depth == 0:
                args.append("".join(cur).strip())
                return [a for a in args if a != ""], rest[i + 1:]
            depth -= 1
        elif c == "," and depth == 0:
            args.append("".join(cur).strip())
            cur = []
            i += 1
            continue
        cur.append(c)
        i += 1
    args.append("".join(cur).strip())
    return [a for a in args if a != ""], ""


@dataclass
class TraceReport:
    calls: int = 0
    writes: list[tuple[str, bytes, bool]] = field(default_factory=list)  # (syscall, absolute path, succeeded)
    opens: list[tuple[str, bytes, bool]] = field(default_factory=list)  # every open* (read or write)
    network: list[str] = field(default_factory=list)  # connect/sendto/sendmsg/sendmmsg on AF_INET/AF_INET6
    inet_sockets: list[str] = field(default_factory=list)  # socket()/bind() on AF_INET/AF_INET6 (no traffic)
    netlink: int = 0
    unix: int = 0
    unparsed: int = 0


def parse_trace(path: Path, start_cwd: bytes) -> TraceReport:
    rep = TraceReport()
    pending: dict[str, str] = {}
    cwd: dict[str, bytes] = {}
    last_cwd = start_cwd

    def base_of(pid: str, dirfd: str | None) -> bytes:
        if dirfd is not None:
            m = _DECOR.match(dirfd)
            if m:
                return _unescape(m.group(1))
        return cwd.get(pid, last_cwd)

    def resolve(pid: str, dirfd: str | None, arg: str) -> bytes | None:
        if not arg.startswith('"'):
            if arg == "NULL" and dirfd is not None:  # utimensat(fd, NULL, ...): the fd itself
                m = _DECOR.match(dirfd)
                return _unescape(m.group(1)) if m else None
            return None
        p = _unescape(arg[1:arg.rfind('"')])
        if not p.startswith(b"/"):
            p = os.path.join(base_of(pid, dirfd), p)
        return os.path.normpath(p)

    with open(path, encoding="latin-1") as fh:
        for raw in fh:
            m = _LINE.match(raw.rstrip("\n"))
            if not m:
                continue
            pid, body = m.groups()
            if body.startswith(("+++", "---")):
                continue
            r = _RESUMED.match(body)
            if r:
                name, tail = r.groups()
                head = pending.pop(pid, None)
                if head is None:
                    rep.unparsed += 1
                    continue
                body = head + tail
            if body.endswith("<unfinished ...>"):
                c = _CALL.match(body)
                if c:
                    pending[pid] = body[: -len("<unfinished ...>")].rstrip()
                continue
            c = _CALL.match(body)
            if not c:
                rep.unparsed += 1
                continue
            name, rest = c.groups()
            rep.calls += 1
            args, ret = _split_call(rest)
            ok = bool(re.match(r"\s*=\s*\d", ret))
            for a in args[:1]:
                d = re.match(r"^AT_FDCWD<(.*)>$", a)
                if d:
                    cwd[pid] = last_cwd = _unescape(d.group(1))
            try:
                if name in ("chdir", "fchdir") and ok:
                    target = resolve(pid, None, args[0]) if name == "chdir" else base_of(pid, args[0])
                    if target:
                        cwd[pid] = last_cwd = target
                elif name in _OPEN_CALLS:
                    dirfd_i, path_i, flags_i = _OPEN_CALLS[name]
                    dirfd = args[dirfd_i] if dirfd_i is not None else None
                    target = None
                    rm = re.match(r"\s*=\s*\d+<(.*)>\s*$", ret)
                    if rm:  # -yy adds "<char 1:3>" to device files
                        target = os.path.normpath(_unescape(re.sub(r"<(char|block) \d+:\d+>$", "", rm.group(1))))
                    if target is None:
                        target = resolve(pid, dirfd, args[path_i])
                    if target is None:
                        continue
                    rep.opens.append((name, target, ok))
                    if len(args) > flags_i and _WRITE_FLAGS.search(args[flags_i]):
                        rep.writes.append((name, target, ok))
                elif name in _WRITE_CALLS:
                    for dirfd_i, path_i in _WRITE_CALLS[name]:
                        dirfd = args[dirfd_i] if dirfd_i is not None else None
                        target = resolve(pid, dirfd, args[path_i])
                        if target is not None:
                            rep.writes.append((name, target, ok))
                elif name in _NET_CALLS:
                    text = ", ".join(args)
                    fam = re.search(r"(?:sa_family=)?\b(AF_[A-Z0-9]+)", text)
                    fd_kind = re.match(r"^\d+<(\w+):", args[0]) if args else None
                    family = fam.group(1) if fam else (fd_kind.group(1) if fd_kind else "")
                    if family in ("AF_INET", "AF_INET6", "TCP", "UDP", "TCPv6", "UDPv6", "AF_PACKET"):
                        call = f"{name}({text[:160]}){ret.strip()[:60]}"
                        (rep.inet_sockets if name in ("socket", "bind") else rep.network).append(call)
                    elif family in ("AF_NETLINK", "NETLINK"):
                        rep.netlink += 1
                    elif family in ("AF_UNIX", "UNIX"):
                        rep.unix += 1
            except IndexError:
                rep.unparsed += 1
    return rep


def _real(path: bytes) -> bytes:
    """The real path of ``path``'s parent folder + its own name (the name itself may be gone or a link)."""
    return os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))


def _pseudo(path: bytes) -> bool:
    return path in (b"/dev/null", b"/dev/tty") or path.startswith((b"/proc/", b"/sys/", b"/dev/pts/"))


# ---------------------------------------------------------------------------------------------------- run


def _watcher_command() -> list[str]:
    exe = Path(sys.executable).parent / "edgeseg"
    if exe.is_file():
        return [str(exe)]
    found = shutil.which("edgeseg")
    return [found] if found else [sys.executable, "-m", "edgeseg.cli"]


def _child_pid(pid: int) -> int | None:
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return None
    return int(kids[0]) if kids else None


def _outputs(root: bytes) -> dict[bytes, tuple]:
    """Result folders and error files anywhere below the root (links not followed)."""
    found: dict[bytes, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            if name.endswith(RESULT_SUFFIX) or name.endswith(ERROR_SUFFIX):
                p = os.path.join(dirpath, name)
                st = os.lstat(p)
                found[p] = (st.st_mtime_ns, st.st_size)
    return found


def _judge(p: Probe, root: bytes, new_outputs: set[bytes], outside_changed: bool, outside_opens: int | None,
           late_ok: bool) -> None:
    folder = os.path.join(root, p.folder) if p.folder else root
    mine = sorted(o for o in new_outputs if os.path.dirname(o) == folder)
    results = [o for o in mine if o.endswith(RESULT_SUFFIX)]
    errors = [o for o in mine if o.endswith(ERROR_SUFFIX)]
    kinds = []
    for e in errors:
        try:
            kinds.append(json.loads(Path(os.fsdecode(e)).read_text(encoding="utf-8")).get("kind", "?"))
        except (OSError, ValueError):
            kinds.append("unreadable")
    p.detail.update({"results": [os.fsdecode(os.path.basename(r)) for r in results],
                     "errors": [os.fsdecode(os.path.basename(e)) for e in errors], "error_kinds": kinds})
    parts = []
    if results:
        parts.append(f"{len(results)} result(s)")
    if errors:
        parts.append(f"{len(errors)} error file(s) [{', '.join(kinds)}]")
    p.observed = ", ".join(parts) or "no output"
    n = len(results) + len(errors)
    if p.expect == "result":
        p.ok = len(results) == p.series and not errors
    elif p.expect == "error":
        p.ok = len(errors) == p.series and not results
    elif p.expect == "result_or_error":
        p.ok = n == p.series
    elif p.expect == "error_or_nothing":
        p.ok = not results and len(errors) <= 1
    else:  # nothing: no output for it anywhere, outside untouched
        p.ok = n == 0 and not outside_changed and not outside_opens
        p.observed = ("ignored" if p.ok else "NOT ignored") + \
            f"; outside/ {'CHANGED' if outside_changed else 'unchanged'}"
        p.observed += (", outside/ opens n/a (no trace)" if outside_opens is None
                       else f", {outside_opens} open(s) of outside/ (all probes)")
        if p.name in ("loop", "loop_pair"):
            p.ok = p.ok and late_ok
            p.observed += "; later series still segmented" if late_ok else "; LATER SERIES NOT SEGMENTED"
    if p.name == "file_link" and results:
        try:
            man = json.loads(Path(os.fsdecode(os.path.join(results[0], b"manifest.json"))).read_text("utf-8"))
            n_files = man.get("series", {}).get("n_dicom_files")
            p.detail["n_dicom_files"] = n_files
            p.observed += f" of {n_files} slices (link not read)" if n_files == p.detail["slices"] else \
                f" of {n_files} slices (expected {p.detail['slices']})"
            p.ok = p.ok and n_files == p.detail["slices"]
        except (OSError, ValueError):
            pass
    if p.name == "dicom_control" and results:
        has_seg = os.path.exists(os.path.join(results[0], b"seg.dcm"))
        p.detail["seg_dcm"] = has_seg
        p.observed += ", seg.dcm written" if has_seg else ", NO seg.dcm"
        p.ok = p.ok and has_seg


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quiet", type=float, default=2.0, help="quiet_period_s (default 2)")
    ap.add_argument("--threads", type=int, default=2, help="inference threads (default 2)")
    ap.add_argument("--observer", choices=("polling", "native"), default="polling",
                    help="the watcher's observer (default polling: the one that walks the folders itself)")
    ap.add_argument("--timeout", type=float, default=900.0, help="give up waiting after this many seconds")
    ap.add_argument("--no-trace", action="store_true", help="do not use strace (tree audit only)")
    ap.add_argument("--work", type=Path, help="work folder (default: a temporary one, removed unless --keep)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (trace, logs, outputs)")
    ap.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = ap.parse_args(argv)

    work = (args.work or Path(tempfile.mkdtemp(prefix="edgeseg-abuse-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    W = os.fsencode(str(work))
    root, state, outside, audit = (os.path.join(W, n) for n in (b"incoming", b"state", b"outside", b"audit"))
    for d in (root, state, outside, audit, os.path.join(state, b"tmp")):
        os.makedirs(d, exist_ok=True)
    from edgeseg.demo import demo_mri_path

    mri = demo_mri_path()
    strace = None if args.no_trace else shutil.which("strace")
    trace_note = ("strace -f -e trace=%file,%network,fchdir" if strace else
                  "strace NOT AVAILABLE (install Debian's strace for the syscall check): tree audit only"
                  if not args.no_trace else "--no-trace: tree audit only")
    print(f"Work folder: {work}\nWrite check: {trace_note}")

    probes = stage_before(root, outside, mri)
    cfg = Path(os.fsdecode(os.path.join(audit, b"watch_config.yaml")))
    cfg.write_text(
        "# written by benchmarks/abuse_suite.py\n"
        f"roots: [{json.dumps(os.fsdecode(root))}]\n"
        f"bundle: demo\nobserver: {args.observer}\npolling_interval_s: 0.5\nrescan_interval_s: 5\n"
        f"quiet_period_s: {args.quiet}\nthreads: {args.threads}\nprecision: auto\ntime_budget_s: 60\n"
        f"state_dir: {json.dumps(os.fsdecode(state))}\n"
        f"log_dir: {json.dumps(os.fsdecode(os.path.join(state, b'logs')))}\n"
        "max_attempts: 1\nstop_grace_s: 10\n"
        "outputs: {per_structure: false, dicom_seg: true, statistics: true, preview: true}\n", encoding="utf-8")

    inputs_before = {**snapshot(root), **snapshot(outside)}
    tree_before = snapshot(W, hash_files=False, skip=(audit,))
    home = os.fsencode(os.path.expanduser("~"))
    extra_dirs = [d for d in (home, b"/tmp", b"/dev/shm") if os.path.isdir(d)]
    extra_before = {d: set(os.listdir(d)) for d in extra_dirs}

    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGESEG_")}
    env.update(TMPDIR=os.fsdecode(os.path.join(state, b"tmp")), PYTHONDONTWRITEBYTECODE="1")
    trace_file = Path(os.fsdecode(os.path.join(audit, b"trace.txt")))
    cmd = [*_watcher_command(), "watch", "--config", str(cfg)]
    if strace:
        cmd = [strace, "-f", "-qq", "-yy", "-s", "4096", "-e", "trace=%file,%network,fchdir",
               "-o", str(trace_file), *cmd]
    stderr_file = open(os.fsdecode(os.path.join(audit, b"watch.stderr")), "wb")
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=str(work), env=env, stdout=stderr_file, stderr=subprocess.STDOUT)
    watcher_pid: int | None = None
    timed_out = False
    rc: int | None = None
    try:
        deadline = t0 + args.timeout
        first = os.path.join(root, b"good_nifti")
        while time.monotonic() < deadline and proc.poll() is None:
            if any(o for o in _outputs(first) if os.path.dirname(o) == first):
                break
            time.sleep(0.5)
        t_first = time.monotonic() - t0
        if proc.poll() is None:
            live = stage_live(root, outside, mri)
            for p in live:
                if p.folder:
                    inputs_before.update(snapshot(os.path.join(root, p.folder)))
            inputs_before[os.path.join(root, b"link_live")] = ("link", outside)
            inputs_before[os.path.join(root, b"late_nifti")] = ("dir",)
            probes += live
        settle = max(8.0, 3 * args.quiet + 2)
        expecting = [p for p in probes if p.expect in ("result", "error", "result_or_error")]
        last, last_change = None, time.monotonic()
        while time.monotonic() < deadline and proc.poll() is None:
            now_outputs = _outputs(root)
            if now_outputs != last:
                last, last_change = now_outputs, time.monotonic()
            done = all(sum(1 for o in now_outputs if os.path.dirname(o) == os.path.join(root, p.folder)) >= p.series
                       for p in expecting)
            if done and time.monotonic() - last_change >= settle:
                break
            time.sleep(0.5)
        else:
            timed_out = proc.poll() is None
        t_done = time.monotonic() - t0
    finally:
        watcher_pid = _child_pid(proc.pid) if strace else proc.pid
        if proc.poll() is None:
            os.kill(watcher_pid or proc.pid, signal.SIGTERM)
            try:
                rc = proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                rc = proc.wait()
        else:
            rc = proc.returncode
        stderr_file.close()
    wall = time.monotonic() - t0

    # --- inputs
    inputs_after = {**snapshot(root), **snapshot(outside)}
    modified = sorted(p for p, v in inputs_before.items() if inputs_after.get(p) != v)
    outside_changed = any(_under(p, outside) for p in modified) or any(
        _under(p, outside) and p not in inputs_before for p in inputs_after)
    new_in_root = [p for p in inputs_after if _under(p, root) and p not in inputs_before]
    stray_in_root = sorted(p for p in new_in_root
                           if not any(_is_output(part) for part in os.path.relpath(p, root).split(b"/")))
    outputs_after = set(_outputs(root))

    # --- tree audit
    tree_after = snapshot(W, hash_files=False, skip=(audit,))
    changed_tree = [p for p, v in tree_after.items() if tree_before.get(p) != v] + \
        [p for p in tree_before if p not in tree_after]
    zones = {"roots": root, "state": state, "outside": outside}
    tree_zones = {z: 0 for z in (*zones, "elsewhere")}
    tree_elsewhere = []
    for p in changed_tree:
        z = next((z for z, d in zones.items() if _under(p, d)), "elsewhere")
        tree_zones[z] += 1
        if z == "elsewhere":
            tree_elsewhere.append(p)
    extra_new = {os.fsdecode(d): sorted(os.fsdecode(n) for n in set(os.listdir(d)) - extra_before[d])
                 for d in extra_dirs}

    # --- trace
    trace: TraceReport | None = None
    allowed = (os.path.realpath(root), os.path.realpath(state))
    outside_real = os.path.realpath(outside)
    writes_outside: list[str] = []
    writes_in_root_non_output: list[str] = []
    outside_opens = 0
    if strace and trace_file.is_file():
        trace = parse_trace(trace_file, W)
        for call, path, ok in trace.writes:
            real = _real(path)
            if _pseudo(real):
                continue
            if _under(real, allowed[0]):
                if not any(_is_output(part) for part in os.path.relpath(real, allowed[0]).split(b"/")):
                    writes_in_root_non_output.append(f"{call} {os.fsdecode(real)} ({'ok' if ok else 'failed'})")
            elif not _under(real, allowed[1]):
                writes_outside.append(f"{call} {os.fsdecode(real)} ({'ok' if ok else 'failed'})")
        outside_opens = sum(1 for _, path, _ in trace.opens if _under(_real(path), outside_real))

    late = next((p for p in probes if p.name == "late_nifti"), None)
    late_folder = os.path.join(root, b"late_nifti")
    late_ok = late is not None and any(o.endswith(RESULT_SUFFIX) and os.path.dirname(o) == late_folder
                                       for o in outputs_after)
    new_outputs = {o for o in outputs_after if o not in inputs_before}  # x.edgeseg/ was there before: input
    for p in probes:
        _judge(p, root, new_outputs, outside_changed, outside_opens if trace else None, late_ok)
    # outputs not in any probe folder (e.g. inside x.edgeseg/ or at the root)
    probe_folders = {os.path.join(root, p.folder) for p in probes if p.folder and p.name != "lookalike"}
    stray_outputs = sorted(o for o in new_outputs if os.path.dirname(o) not in probe_folders)
    for p in probes:
        if p.expect == "nothing" and stray_outputs:
            p.ok = False

    # --- log
    log_path = os.path.join(state, b"logs", b"watch.log")
    forged = esc = 0
    if os.path.isfile(log_path):
        for line in Path(os.fsdecode(log_path)).read_bytes().splitlines():
            forged += 0 if LOG_LINE.match(line) else 1
            esc += line.count(b"\x1b")

    series_probes = [p for p in probes if p.expect in ("result", "error", "result_or_error")]
    dropped = sum(max(0, p.series - len(p.detail.get("results", [])) - len(p.detail.get("errors", [])))
                  for p in series_probes)
    good_series = sum(p.series for p in probes if p.good)
    good_done = sum(min(p.series, len(p.detail.get("results", []))) for p in probes if p.good)
    summary = {
        "probes_run": len(probes),
        "probes_passed": sum(1 for p in probes if p.ok),
        "inputs_checked": len(inputs_before),
        "inputs_modified": len(modified),
        "writes_outside_roots_and_state": len(writes_outside) if trace else None,
        "writes_in_roots_not_outputs": len(writes_in_root_non_output) if trace else None,
        "opens_of_outside": outside_opens if trace else None,
        "tree_changes_outside": tree_zones["outside"],
        "tree_changes_elsewhere": tree_zones["elsewhere"],
        "stray_files_in_roots": len(stray_in_root),
        "stray_outputs": len(stray_outputs),
        "series_dropped": dropped,
        "good_series_segmented": f"{good_done}/{good_series}",
        "network_attempts": len(trace.network) if trace else None,
        "inet_sockets_no_traffic": len(trace.inet_sockets) if trace else None,
        "log_lines_forged": forged,
        "log_escape_bytes": esc,
        "trace_calls": trace.calls if trace else None,
        "trace_write_calls": len(trace.writes) if trace else None,
        "trace_unparsed_lines": trace.unparsed if trace else None,
        "watcher_exit_code": rc,
        "timed_out": timed_out,
        "first_result_s": round(t_first, 1),
        "all_done_s": round(t_done, 1),
        "wall_s": round(wall, 1),
    }

    m = machine()
    print(f"\nFault-and-abuse suite: edgeseg watch (demo bundle, {args.observer} observer, quiet period "
          f"{args.quiet:g} s, {args.threads} threads) in a child process; {trace_note}")
    print(f"Machine: {m['cpu']}, {m['logical_cores']} logical cores, {m['platform']}")
    print()
    rows = [{"probe": p.name, "live": "live" if p.live else "", "what": p.what, "expect": p.expect,
             "observed": p.observed, "ok": "PASS" if p.ok else "FAIL"} for p in probes]
    print_table(rows, [("probe", "PROBE"), ("live", "WHEN"), ("what", "WHAT"), ("expect", "EXPECTED"),
                       ("observed", "OBSERVED"), ("ok", "OK")])
    print()
    figure = [
        ("probes run (passed)", f"{summary['probes_run']} ({summary['probes_passed']})"),
        ("inputs modified", f"{len(modified)} of {len(inputs_before)} input files/links (sha256, link targets)"),
        ("writes outside the roots + state folder",
         f"{len(writes_outside)} (syscall trace: {len(trace.writes)} write-type calls of {trace.calls})" if trace
         else f"n/a without strace; tree audit: {tree_zones['elsewhere']} change(s) in the temp tree outside "
              f"roots/state, outside/ {'CHANGED' if outside_changed else 'unchanged'}"),
        ("  writes in the roots to non-output names",
         "n/a" if trace is None else str(len(writes_in_root_non_output))),
        ("  opens of outside/ (files or folders)", "n/a" if trace is None else str(outside_opens)),
        ("  tree audit (roots / state / outside / elsewhere)",
         " / ".join(str(tree_zones[z]) for z in ("roots", "state", "outside", "elsewhere"))
         + " changed entries"),
        ("stray files in roots / stray outputs", f"{len(stray_in_root)} / {len(stray_outputs)}"),
        ("series dropped", f"{dropped} (good series segmented {good_done}/{good_series})"),
        ("network attempts", "n/a without strace" if trace is None else
         f"{len(trace.network)} (connect/send* on AF_INET/AF_INET6; unix-socket calls {trace.unix}, "
         f"netlink {trace.netlink})"),
        ("  inet sockets opened or bound, no traffic", "n/a" if trace is None else str(len(trace.inet_sockets))),
        ("log lines forged / escape bytes in the log", f"{forged} / {esc}"),
        ("watcher exit after SIGTERM", f"{rc}{' (TIMED OUT waiting)' if timed_out else ''}; first result "
         f"{t_first:.1f} s, all done {t_done:.1f} s, wall {wall:.1f} s"),
    ]
    print_table([{"k": k, "v": v} for k, v in figure], [("k", "FIGURE"), ("v", "VALUE")])
    details = {
        "inputs_modified": [os.fsdecode(p) for p in modified],
        "writes_outside": writes_outside[:200],
        "writes_in_roots_not_outputs": writes_in_root_non_output[:200],
        "network": trace.network[:50] if trace else None,
        "inet_sockets_no_traffic": trace.inet_sockets[:50] if trace else None,
        "stray_in_root": [os.fsdecode(p) for p in stray_in_root],
        "stray_outputs": [os.fsdecode(p) for p in stray_outputs],
        "tree_changes_elsewhere": [os.fsdecode(p) for p in tree_elsewhere],
        "new_entries_home_tmp_shm": extra_new if not trace else None,
    }
    for key, val in details.items():
        if val and not isinstance(val, dict):
            print(f"\n{key} ({len(val)}):")
            for item in val[:30]:
                print(f"  {item}")
    if not trace:
        print("\nWithout strace, new entries in $HOME, /tmp and /dev/shm during the run (other processes may have "
              f"made them): {json.dumps(extra_new)}")
    write_json(args.json, {"machine": m, "settings": {"quiet_period_s": args.quiet, "threads": args.threads,
                                                      "observer": args.observer,
                                                      "write_check": trace_note, "work": str(work)},
                           "summary": summary, "probes": [{**{k: v for k, v in p.__dict__.items() if k != "folder"},
                                                           "folder": os.fsdecode(p.folder)} for p in probes],
                           "details": details})
    if args.keep:
        print(f"\nKept: {work} (trace: audit/trace.txt, watcher output: audit/watch.stderr)")
    elif args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    bad = (len(modified) or (trace and (writes_outside or trace.network)) or dropped or timed_out
           or not all(p.ok for p in probes))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

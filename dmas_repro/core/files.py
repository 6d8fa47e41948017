"""Files written safely: atomic directories and files, streaming sha256, free-space checks.

Every stage writes through these, so a kill at any moment leaves either the old or the new
content, never a torn one; what a command did not create is never replaced or hidden (an
existing non-empty directory is refused unless the caller recognises it as its own earlier
output); a full disk is one `DiskFull` error; and files and directories get the user's umask
(`tempfile` would make them 0600/0700, unreadable for colleagues on a shared cluster).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from .errors import UserError


class DiskFull(UserError):
    """No space left on the device while writing: nothing was replaced, the partial copy is removed."""


def is_no_space(e: BaseException) -> bool:
    """True for "no space left on device" (or over quota) from the OS, safetensors or torch."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(e)
    return any(s in text for s in ("No space left on device", "os error 28", "Disk quota exceeded"))


def disk_full(path: str | os.PathLike, kept: str = "nothing was replaced", then: str = "rerun") -> DiskFull:
    """The one-line error for a write to `path` that ran out of space (with the space left there)."""
    probe = Path(path)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = f"{shutil.disk_usage(probe).free / 1e9:.2f} GB free"
    except OSError:
        free = "free space unknown"
    return DiskFull(f"no space left on the device writing {path} ({free}); the partial copy was removed and "
                    f"{kept}. Free some space, then {then}")


# ---------------------------------------------------------------- permissions
_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask, read without changing it where /proc allows (else set and restored)."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    with _UMASK_LOCK:
        old = os.umask(0o022)
        os.umask(old)
    return old


def apply_umask(path: str | os.PathLike, umask: int | None = None) -> None:
    """Give a file 0666 (executables 0777) or a directory 0777, less the umask: the modes a plain
    open()/mkdir() makes, for files that tempfile or safetensors created private."""
    umask = current_umask() if umask is None else umask
    st = os.stat(path)
    if os.path.isdir(path):
        mode = 0o777
    else:
        mode = 0o777 if st.st_mode & 0o111 else 0o666
    os.chmod(path, mode & ~umask)


# ---------------------------------------------------------------- checks on an output path
def _check_not_file(p: Path, shown: str) -> None:
    for q in (p, *p.parents):
        if q.exists():
            if not q.is_dir():
                what = "is a file" if q == p else f"lies below {q}, which is a file"
                raise UserError(f"{shown}: {what}, not a directory; choose a directory path")
            return


def check_out_dir(path: str | os.PathLike, flag: str = "--out") -> Path:
    """An output directory that is or will be a directory: refuse, before any work, a path that
    names an existing file (or lies below one)."""
    p = Path(path)
    _check_not_file(p, f"{flag} {p}" if flag else str(p))
    return p


def _contents(d: Path, n: int = 3) -> str:
    names = sorted(x.name for x in d.iterdir())
    return ", ".join(names[:n]) + (f", ... ({len(names)} entries)" if len(names) > n else "")


def check_new_dir(final: str | os.PathLike, replace: Callable[[Path], bool | str] | None = None,
                  hint: str = "choose a new directory", flag: str = "") -> Path:
    """Check that `final` may be written as a whole directory; raise `UserError` (nothing changed)
    when not. Allowed: a path that does not exist, an empty directory, or, with `replace`, a
    directory for which `replace(final)` is True (the caller's own earlier output; any other
    answer refuses, and a string answer names what is foreign). Never the current directory or
    one above it, and never a file. `flag` (e.g. "--out") prefixes the message."""
    shown = f"{flag} {final}" if flag else str(final)
    final = Path(os.path.abspath(final))
    try:
        cwd = Path.cwd()
    except OSError:  # the current directory was deleted: nothing to protect there
        cwd = Path("/nonexistent-cwd")
    if final == cwd or final in cwd.parents or final == final.parent:
        raise UserError(f"{shown}: is the current directory (or one above it), which is not replaced; name a new "
                        "directory, e.g. ./hf")
    _check_not_file(final, shown)
    if final.exists() and any(final.iterdir()):
        if replace is None:
            raise UserError(f"{shown}: already exists and is not empty ({_contents(final)}); nothing was "
                            f"changed; {hint}")
        verdict = replace(final)
        if verdict is not True:
            what = verdict if isinstance(verdict, str) and verdict else _contents(final)
            raise UserError(f"{shown}: holds files this command did not write ({what}); nothing was changed; {hint}")
    return final


# ---------------------------------------------------------------- atomic directories and files
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def fsync_dir(path: Path) -> None:
    fd = os.open(str(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _commit(tmp: Path, final: Path) -> None:
    if final.is_dir() and any(final.iterdir()):
        # the caller's own earlier output (checked): swapped atomically, then the old copy removed
        if _exchange(tmp, final):
            shutil.rmtree(tmp, ignore_errors=True)
            return
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
        return
    try:
        tmp.rename(final)  # replaces an empty directory in one step
    except OSError as e:
        if e.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
            raise UserError(f"{final}: appeared while it was being written; nothing was replaced") from None
        raise


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike, replace: Callable[[Path], bool | str] | None = None,
               hint: str = "choose a new directory") -> Iterator[Path]:
    """Yield a temporary sibling directory; on success fsync its files and rename it to `final`.

    `final` must not exist or be an empty directory; with `replace`, a non-empty directory for
    which `replace(final)` is True (the caller's own earlier output, recognised by its files) is
    replaced in one atomic step (renameat2 RENAME_EXCHANGE). Anything else is refused with
    `UserError` before the body runs (`check_new_dir`), and checked again before the rename.
    A crash or kill at any moment leaves either the old `final` or a complete new one, never a
    partial one; leftovers are named `.NAME.tmp-*` and ignored by readers. A full disk raises
    `DiskFull` and removes the partial copy. Files and directories get the user's umask.
    """
    given = final
    final = check_new_dir(final, replace, hint)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
        umask = current_umask()
        apply_umask(tmp, umask)
        for f in tmp.rglob("*"):
            if f.is_symlink():
                continue
            apply_umask(f, umask)
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        fsync_dir(tmp)
        check_new_dir(final, replace, hint)
        _commit(tmp, final)
        fsync_dir(final.parent)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if is_no_space(e) and not isinstance(e, DiskFull):
            raise disk_full(given) from None
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write a file so that readers see the old or the new content, never a torn one (mode: the
    existing file's, else 0666 less the umask). A full disk raises `DiskFull`; the old file stays."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.chmod(tmp, os.stat(path).st_mode & 0o7777)
        except FileNotFoundError:
            os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if is_no_space(e):
            raise disk_full(path) from None
        raise


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 24) -> str:
    """sha256 of a file, read in 16 MiB blocks (shards and weight files can be GBs)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def check_free_space(path: str | os.PathLike, need_bytes: int, what: str) -> None:
    """One clear error before writing `need_bytes` under `path` on a disk that lacks room."""
    path = Path(path)
    probe = path if path.exists() else path.parent
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < need_bytes:
        raise UserError(
            f"not enough disk space for {what} in {path}: need {need_bytes / 1e9:.2f} GB, "
            f"{free / 1e9:.2f} GB free"
        )


def dir_size_bytes(path: str | os.PathLike) -> int:
    """Bytes of every file below `path`."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())

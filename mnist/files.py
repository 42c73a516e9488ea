"""Atomic file writes: readers see the old file or the new one, never half of one.

A file is written to a temp file in its destination's folder (so the final rename stays on one
file system and is atomic), then ``move_into_place`` syncs it, gives it the mode a newly created
file gets, and renames it onto the destination. ``write_new`` creates a file only if its name is
free, complete or not at all: the finished temp file is hard-linked to the name, which fails if
the name exists (so of several processes, one wins).

A file appended to row by row (log.csv) is not written atomically: a process killed while
writing a row leaves it cut short. ``csv_rows`` reads such a file without it.

``FolderLock`` holds a folder for as long as a process works in it (mnist.train's run folder): an
exclusive ``flock`` on a lock file in it, which the kernel releases when the process ends, however
it ends (so a crashed or killed process leaves no lock behind, only, at most, an unlocked file).
"""
import csv
import io
import os
import socket
import tempfile
import time

try:
    import fcntl
except ImportError:                             # (Windows: no flock; FolderLock then holds nothing)
    fcntl = None

_UMASK = os.umask(0)            # read once, at import: setting it back and forth later would race with
os.umask(_UMASK)                # other threads creating files


def os_error(e, message):
    """An OSError of e's kind and errno whose text is ``message`` alone: a user reads "cannot write ...",
    not the "[Errno 13] " that str(OSError(errno, message)) starts with."""
    error = type(e)(message)
    error.errno = e.errno
    return error


def move_into_place(tmp, path, replace=True):
    """fsync the closed temp file ``tmp``, give it mode 0o666 & ~umask (mkstemp makes 0600, which
    other users of a shared folder could not read), then move it to ``path``:

    - replace=True: os.replace, over whatever ``path`` was;
    - replace=False: only if ``path`` does not exist (else FileExistsError, tmp left for the
      caller): os.link, which fails if the name is taken, then tmp removed. Where the file
      system has no hard links (FAT, many FUSE mounts), the name is claimed by creating it empty
      with O_EXCL, then os.replace'd by tmp: the same claim, with a moment when it is empty.
    """
    fd = os.open(tmp, os.O_RDWR)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)
    if replace:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError:                            # no hard links here
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        os.replace(tmp, path)
    else:
        os.unlink(tmp)


def write_new(path, write, mode="wb"):
    """write_atomic, but only if ``path`` does not exist yet: returns False, writing nothing, if it
    does (or another process creates it first)."""
    try:
        write_atomic(path, write, mode, replace=False)
    except FileExistsError:
        return False
    return True


def write_atomic(path, write, mode="wb", newline=None, replace=True):
    """Call write(file) on a temp file in path's folder (created if missing), then move_into_place
    (with ``replace``: see there); on any error the temp file is removed and the old file, if any,
    is left as it was. ``mode`` and ``newline`` as open()'s (csv files want newline="")."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:                       # named after the folder that could not be made
        raise os_error(e, f"cannot make the folder {folder} for {os.path.basename(path)}: {e.strerror}") from None
    try:
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    except OSError as e:                       # named after the file wanted, not the temp file
        raise os_error(e, f"cannot write {path}: {e.strerror}") from None
    try:
        with os.fdopen(fd, mode, newline=newline) as f:
            write(f)
        move_into_place(tmp, path, replace)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def csv_rows(path):
    """The rows of a CSV file appended to row by row, as (line number, row) pairs: blank lines
    skipped, and the last line dropped if it has no line end (a row cut as it was written: even if
    what is left parses, its last value may be cut)."""
    with open(path, newline="") as f:
        text = f.read()
    reader = csv.reader(io.StringIO(text, newline=""))
    rows = [(reader.line_num, row) for row in reader if row]
    return rows[:-1] if rows and not text.endswith("\n") else rows


class FolderInUse(RuntimeError):
    """Another process holds the folder (FolderLock)."""


class FolderLock:
    """Hold ``folder`` while a process works in it: of two processes locking it at once, one gets it,
    the other a FolderInUse naming the folder and the holder (what the holder wrote into the lock file:
    ``holder``, its pid, host and start time), having written nothing. Released by ``release()``
    (or on leaving a ``with`` block), and by the kernel when the process ends (a killed process's
    lock does not outlive it: the lock is an exclusive flock on ``folder/name``, not the file).

    The holder removes the lock file as it releases it. A process that opened the file just before
    then locks a file that is no longer there: it sees that (the name is gone, or names another
    file) and tries again with the file at the name, so two processes never both hold the folder.
    Where the file system has no flock (some FUSE mounts; Windows), ``held`` is False and ``why``
    says why: the folder is then not locked at all.
    """

    def __init__(self, folder, holder, name="lock"):
        self.folder, self.path = folder, os.path.join(folder, name)
        self.held, self.why, self._fd = False, None, None
        if fcntl is None:
            self.why = "this system has no flock"
            return
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as e:
                raise os_error(e, f"cannot lock {folder}: cannot open {self.path}: {e.strerror}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                held_by = os.pread(fd, 1000, 0).decode(errors="replace").strip().splitlines()
                os.close(fd)
                raise FolderInUse(f"{folder} is in use by {held_by[0] if held_by else 'another process'} "
                                  f"(its lock: {self.path}); try again once that has ended") from None
            except OSError as e:                 # no locks on this file system
                os.close(fd)
                try:
                    os.unlink(self.path)
                except OSError:
                    pass
                self.why = f"{self.path} cannot be locked here ({e.strerror})"
                return
            if _same_file(fd, self.path):
                break
            os.close(fd)                         # released and removed as we opened it: the next one
        self._fd, self.held = fd, True
        try:                                     # who holds it: what another process finding it held says
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{holder}, pid {os.getpid()} on {socket.gethostname()}, since "
                          f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
        except BaseException:
            self.release()
            raise

    def release(self):
        """Remove the lock file, then unlock it (in that order: see the class docstring). Idempotent."""
        if self._fd is None:
            return
        try:
            os.unlink(self.path)
        except FileNotFoundError:                # (removed by hand: nothing to remove)
            pass
        finally:
            os.close(self._fd)
            self._fd, self.held = None, False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def _same_file(fd, path):
    """Whether ``path`` names the file open as ``fd``."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)

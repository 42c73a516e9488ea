"""MNIST: find, download, verify and read the four IDX files, then batch them.

Where the files are looked for (the first rule that applies wins; see ``resolve_data_dir``):
  1. an explicit ``data_dir`` (the training CLI's ``--data-dir``): the folder holding the files;
  2. ``$NANOTORCH_DATA/mnist`` (``NANOTORCH_DATA`` is a data home with an ``mnist/`` folder);
  3. ``$XDG_CACHE_HOME/nanotorch/mnist``, else ``~/.cache/nanotorch/mnist``.

The files are the canonical ``train-images-idx3-ubyte.gz``, ``train-labels-idx1-ubyte.gz``,
``t10k-images-idx3-ubyte.gz`` and ``t10k-labels-idx1-ubyte.gz``, gzipped or already
decompressed (the same name without ``.gz``). Missing ones are downloaded from ``MIRRORS``.
Every file is checked against the SHA-256 of its *decompressed* content each time it is
downloaded or loaded, so a gzip recompressed by someone else still passes and a truncated or
altered one never does.

IDX format (http://yann.lecun.com/exdb/mnist/): two zero bytes, a dtype code, the number of
dimensions, each dimension as a big-endian uint32, then the values in C order, big-endian.
"""
import gzip
import hashlib
import logging
import math
import os
import re
import sys
import tempfile
import time
import zlib
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import requests
from tqdm import tqdm

from mnist.files import move_into_place, os_error

log = logging.getLogger(__name__)

# Tried in this order. The S3 and GCS copies are the ones torchvision and TensorFlow use; the
# original site is last because it often refuses automated downloads.
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)

# split -> (images file, labels file), by their canonical (gzipped) names.
SPLITS = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}

# SHA-256 of each file's decompressed content, keyed by the decompressed name. Hashing the
# content rather than the .gz makes the check independent of how the file was compressed.
SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}

TIMEOUT = 30.0  # seconds, for connecting and for each read (not for the whole download)
ATTEMPTS = 2  # tries per mirror before moving to the next one
BACKOFF = 1.0  # seconds; the k-th retry waits k * BACKOFF

# The training set's pixel mean and std after scaling to [0, 1] (the numbers PyTorch's MNIST
# examples use), so curves can be laid over theirs.
MEAN = 0.1307
STD = 0.3081

_GZIP_MAGIC = b"\x1f\x8b"
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class MnistDownloadError(RuntimeError):
    """Every mirror failed for one file; the message says what each answered."""


class MnistChecksumError(ValueError):
    """A file's decompressed content does not have the expected SHA-256."""


class _MirrorFailed(Exception):
    """One mirror could not provide a good copy; its message is what it answered."""


# ----------------------------------------------------------------------------- IDX files

def read_idx(path_or_fileobj, ndim=None):
    """Read an IDX file, gzipped or raw (told apart by the gzip magic bytes, not the name).

    path_or_fileobj: a path, or a binary file object open for reading.
    ndim: if given, the number of dimensions the file must declare.
    Returns a writable array of the declared shape, in native byte order, with the dtype
    given by the file's dtype code (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
    0x0D float32, 0x0E float64).
    Raises ValueError, naming the file, for corrupt gzip data, a bad magic number, the wrong
    number of dimensions, or a payload that is not exactly the declared size.
    """
    data, name = _read_content(path_or_fileobj)
    return _parse_idx(data, name, ndim)


def _read_content(source):
    """Return (the decompressed bytes of a file or file object, its name for messages)."""
    if hasattr(source, "read"):
        name = str(getattr(source, "name", "<file object>"))
        data = source.read()
    else:
        name = os.fspath(source)
        with open(name, "rb") as f:
            data = f.read()
    if data[:2] == _GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:
            raise ValueError(
                f"{name}: corrupt gzip data ({e}); delete it to re-download, or replace it "
                "with a good copy"
            ) from e
    return data, name


def _parse_idx(data, name, ndim=None):
    """Parse IDX bytes into an array; `name` is only used in error messages."""
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] not in _IDX_DTYPES:
        codes = " ".join(f"{c:02x}" for c in _IDX_DTYPES)
        raise ValueError(
            f"{name}: not an IDX file: magic number {data[:4].hex(' ') or '(empty)'}, "
            f"expected 00 00 <dtype code, one of {codes}> <number of dimensions>"
        )
    dtype, declared = np.dtype(_IDX_DTYPES[data[2]]), data[3]
    if ndim is not None and declared != ndim:
        raise ValueError(f"{name}: expected an IDX file with {ndim} dimension(s), found {declared}")
    header = 4 + 4 * declared
    if len(data) < header:
        raise ValueError(
            f"{name}: truncated header: {declared} dimension(s) need {header} bytes, "
            f"found {len(data)}"
        )
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(declared))
    count = math.prod(shape)
    expected = header + count * dtype.itemsize
    if len(data) != expected:
        problem = "truncated" if len(data) < expected else "trailing bytes"
        raise ValueError(
            f"{name}: {problem}: shape {shape} of {dtype.name} needs {expected} bytes "
            f"({header} header + {count * dtype.itemsize} data), found {len(data)}"
        )
    values = np.frombuffer(data, dtype=dtype, count=count, offset=header)
    # astype copies: the result is writable and in native byte order.
    return values.astype(dtype.newbyteorder("=")).reshape(shape)


# ----------------------------------------------------------------------------- where the files are

def resolve_data_dir(data_dir=None):
    """The folder that holds (or will hold) the four MNIST files, as an absolute Path.

    Order: `data_dir` if given; else $NANOTORCH_DATA/mnist; else $XDG_CACHE_HOME/nanotorch/mnist;
    else ~/.cache/nanotorch/mnist. Empty environment variables count as unset.
    """
    if data_dir is not None and os.fspath(data_dir) != "":
        return Path(data_dir).expanduser().absolute()
    data_home = os.environ.get("NANOTORCH_DATA")
    if data_home:
        return (Path(data_home).expanduser() / "mnist").absolute()
    cache = os.environ.get("XDG_CACHE_HOME")
    cache_home = Path(cache).expanduser() if cache else Path.home() / ".cache"
    return (cache_home / "nanotorch" / "mnist").absolute()


def _folder(data_dir):
    """resolve_data_dir(data_dir), refused if it names a file (else the error would be a failed download into it)."""
    directory = resolve_data_dir(data_dir)
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(f"{directory} is a file, not a folder: the MNIST files are looked for in a folder "
                                 "(--data-dir DIR, data_dir=DIR in Python, or $NANOTORCH_DATA/mnist)")
    return directory


def _find(directory, gz_name):
    """The file's path in `directory`, gzipped or decompressed, or None if neither is there."""
    for candidate in (directory / gz_name, directory / gz_name[: -len(".gz")]):
        if candidate.is_file():
            return candidate
    return None


def _where_to_put(directory):
    names = ", ".join(name for pair in SPLITS.values() for name in pair)
    return (
        f"Put the MNIST files ({names}; gzipped or not) in {directory}, "
        "or pass --data-dir DIR, the folder that holds them (data_dir=DIR in Python), "
        "or set NANOTORCH_DATA to a folder whose mnist/ holds them."
    )


def _found_nearby(directory, checksums=None):
    """The folder one level up or down from `directory` (its parent, or its mnist/) that holds the
    four MNIST files, checked against their checksums (Fashion-MNIST's files have the same names),
    if one does: the likely slip of naming the data home for its mnist/, or the reverse."""
    checksums = SHA256 if checksums is None else checksums

    def genuine(path):
        try:
            return _content_sha256(path)[0] == checksums[path.name.removesuffix(".gz")]
        except (OSError, EOFError, zlib.error):
            return False
    for near in (directory.parent, directory / "mnist"):
        paths = [_find(near, name) for pair in SPLITS.values() for name in pair]
        if all(paths) and all(genuine(p) for p in paths):
            return near
    return None


def _look_there(directory, near):
    also = (f", or set NANOTORCH_DATA={near.parent} (a folder whose mnist/ holds the files)" if near.name == "mnist"
            else "")
    return (f"The MNIST files are not in {directory} but in {near}: pass --data-dir {near} (data_dir= in "
            f"Python){also}.")


# ----------------------------------------------------------------------------- downloading

def download_mnist(data_dir=None, mirrors=None, splits=("train", "test"), checksums=None,
                   timeout=None, attempts=None, backoff=None, progress=True):
    """Download whichever of the splits' files are missing; files already there are kept.

    data_dir: see `resolve_data_dir`. mirrors: base URLs tried in turn (default `MIRRORS`).
    checksums: decompressed name -> SHA-256 hex (default `SHA256`).
    timeout: seconds for connecting and for each read, or a (connect, read) pair.
    attempts: tries per mirror; the k-th retry waits k * `backoff` seconds.
    (timeout, attempts, backoff default to the module's TIMEOUT, ATTEMPTS, BACKOFF, read at
    call time.)
    progress: show a tqdm bar on stderr (only when it is a terminal).
    Returns the paths of the splits' files (images, labels per split).
    Raises MnistDownloadError when every mirror fails for a file.
    """
    directory = _folder(data_dir)
    if mirrors is None:
        mirrors = MIRRORS
    mirrors = [mirrors] if isinstance(mirrors, str) else list(mirrors)
    checksums = SHA256 if checksums is None else checksums
    timeout = TIMEOUT if timeout is None else timeout
    attempts = ATTEMPTS if attempts is None else attempts
    backoff = BACKOFF if backoff is None else backoff
    if any(_find(directory, name) is None for split in splits for name in _split_files(split)):
        near = _found_nearby(directory, checksums)
        if near is not None:             # a folder one level off: say so rather than download
            raise FileNotFoundError(_look_there(directory, near))
    paths = []
    for split in splits:
        for gz_name in _split_files(split):
            path = _find(directory, gz_name)
            if path is None:
                path = _download(gz_name, directory, mirrors, checksums,
                                 timeout, attempts, backoff, progress)
            paths.append(path)
    return paths


def _download(gz_name, directory, mirrors, checksums, timeout, attempts, backoff, progress):
    """Fetch one file from the first mirror that serves a good copy; return its path."""
    expected = checksums[gz_name[: -len(".gz")]]
    created = [d for d in (directory, *directory.parents) if not d.exists()]    # to remove again on failure
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _unwritable(gz_name, directory, e) from None
    failures = []
    for i, mirror in enumerate(mirrors):
        url = mirror.rstrip("/") + "/" + gz_name
        try:
            return _fetch_verified(url, gz_name, directory, expected,
                                   timeout, attempts, backoff, progress)
        except _MirrorFailed as e:
            failures.append(f"  {url}: {e}")
            if i + 1 < len(mirrors):        # (after the last one, the error below lists every answer)
                log.warning("MNIST: %s failed: %s; trying the next mirror", url, e)
    answers = "\n".join(failures) or "  (no mirrors were given)"
    for d in created:                    # innermost first; a folder that holds anything stays
        try:
            d.rmdir()
        except OSError:
            break
    raise MnistDownloadError(
        f"Could not download {gz_name}; every mirror failed:\n{answers}\n{_where_to_put(directory)}"
    )


def _fetch_verified(url, gz_name, directory, expected, timeout, attempts, backoff, progress):
    """Download `url` into a temp file beside its destination, check it, move it into place.

    The temp file lives in the same directory so that os.replace is an atomic rename: other
    processes see either no file or the complete, verified one, never a partial download.
    mnist.files.move_into_place fsyncs it first and gives it the usual mode (0o666 & ~umask),
    so a shared data folder stays readable by everyone who shares it.
    """
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{gz_name}.", suffix=".part")
    except OSError as e:
        raise _unwritable(gz_name, directory, e) from None
    try:
        with os.fdopen(fd, "wb") as f:
            _get(url, f, gz_name, timeout, attempts, backoff, progress)
        try:
            actual, is_gzip = _content_sha256(tmp)
        except (OSError, EOFError, zlib.error) as e:
            raise _MirrorFailed(f"corrupt gzip data ({e})") from e
        if actual != expected:
            raise _MirrorFailed(f"checksum mismatch: expected SHA-256 {expected}, got {actual}")
        # Some servers strip the gzip layer (Content-Encoding); keep the file under the name
        # that matches what it is.
        destination = directory / (gz_name if is_gzip else gz_name[: -len(".gz")])
        move_into_place(tmp, destination)
        return destination
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _unwritable(gz_name, directory, e):
    """The error for a missing file whose folder cannot take a download (rather than the temp file's name)."""
    return os_error(e, f"{gz_name} is missing from {directory}, which cannot be written to download it into "
                       f"({e.strerror}).\n{_where_to_put(directory)}")


def _get(url, f, label, timeout, attempts, backoff, progress):
    """Stream `url` into the open file `f`, retrying connection errors, timeouts and 5xx."""
    for attempt in range(1, attempts + 1):
        try:
            with requests.get(url, stream=True, timeout=timeout) as response:
                response.raise_for_status()
                f.seek(0)
                f.truncate()  # drop what a failed earlier attempt wrote
                total = int(response.headers.get("Content-Length", 0)) or None
                with tqdm(total=total, desc=label, unit="B", unit_scale=True, unit_divisor=1024,
                          file=sys.stderr, leave=False, disable=None if progress else True) as bar:
                    for chunk in response.iter_content(chunk_size=1 << 16):
                        f.write(chunk)
                        bar.update(len(chunk))
            return
        except requests.HTTPError as e:
            status = e.response.status_code
            answer = f"HTTP {status} {e.response.reason}"
            # A client error (404, 403, ...) will not change on retry; 408 and 429 might.
            if 400 <= status < 500 and status not in (408, 429):
                raise _MirrorFailed(answer) from e
        except requests.RequestException as e:
            answer = _reason(e, url)
        if attempt < attempts:
            time.sleep(backoff * attempt)
    raise _MirrorFailed(f"{answer} (after {attempts} attempt(s))")


def _reason(e, url):
    """A failed request in one line (requests' own text repeats the URL and nests its cause twice)."""
    host = urlparse(url).hostname
    text = str(e)
    if isinstance(e, requests.Timeout):
        return f"{type(e).__name__}: {host} did not answer in time"
    if isinstance(e, (requests.exceptions.SSLError, requests.exceptions.ProxyError)):   # the cause says what to fix
        cause = re.search(r"certificate verify failed[^'\"]*|Tunnel connection failed[^'\"]*", text)
        return f"{type(e).__name__}: {host}: {cause.group(0) if cause else text[-200:]}"
    if isinstance(e, requests.ConnectionError):
        if "NameResolutionError" in text or "Name or service not known" in text or "getaddrinfo" in text:
            return f"ConnectionError: cannot resolve {host} (no network, or no DNS)"
        errno_text = re.search(r"\[Errno -?\d+\] [^'\"]*", text)
        return f"ConnectionError: cannot connect to {host}" + (f" ({errno_text.group(0)})" if errno_text else "")
    return f"{type(e).__name__}: {text[:200]}"


def _content_sha256(path):
    """(SHA-256 hex of the file's decompressed content, whether it was gzipped), streamed."""
    with open(path, "rb") as f:
        is_gzip = f.read(2) == _GZIP_MAGIC
    digest = hashlib.sha256()
    with (gzip.open if is_gzip else open)(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest(), is_gzip


# ----------------------------------------------------------------------------- loading

def _split_files(split):
    if split not in SPLITS:
        raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
    return SPLITS[split]


def _load_verified(directory, gz_name, checksums, ndim):
    """Read one file after checking its decompressed content's SHA-256."""
    path = _find(directory, gz_name)
    if path is None:
        near = _found_nearby(directory, checksums)
        raise FileNotFoundError(
            f"MNIST file {gz_name} (or {gz_name[: -len('.gz')]}) not found in {directory}. " +
            (_look_there(directory, near) if near else f"Pass download=True to fetch it. {_where_to_put(directory)}")
        )
    data, _ = _read_content(path)
    expected = checksums[gz_name[: -len(".gz")]]
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise MnistChecksumError(
            f"{path}: checksum mismatch: the decompressed content should have SHA-256 "
            f"{expected}, it has {actual}. The file is corrupt or not the canonical MNIST file: "
            f"delete it to re-download, or point --data-dir / NANOTORCH_DATA at good copies."
        )
    return _parse_idx(data, str(path), ndim)


def load_mnist(split="train", data_dir=None, download=True, mirrors=None, checksums=None):
    """Load one MNIST split, downloading missing files first if `download`.

    split: "train" (60000 images) or "test" (10000).
    data_dir: see `resolve_data_dir`. mirrors: see `download_mnist`.
    checksums: decompressed name -> SHA-256 hex (default `SHA256`; tests pass their own).
    Returns images uint8 (N, 28, 28) with 0 = background, and labels uint8 (N,) in 0..9.
    Raises FileNotFoundError (missing, download=False), MnistDownloadError, MnistChecksumError,
    or ValueError for a malformed file.
    """
    images_name, labels_name = _split_files(split)
    directory = _folder(data_dir)
    checksums = SHA256 if checksums is None else checksums
    if download:
        download_mnist(directory, mirrors, splits=(split,), checksums=checksums)
    images = _load_verified(directory, images_name, checksums, ndim=3)
    labels = _load_verified(directory, labels_name, checksums, ndim=1)
    if images.dtype != np.uint8 or labels.dtype != np.uint8:
        raise ValueError(f"MNIST {split}: expected uint8 files, found {images.dtype} images "
                         f"and {labels.dtype} labels")
    if images.shape[1:] != (28, 28):
        raise ValueError(f"MNIST {split}: expected 28x28 images, found {images.shape[1:]}")
    if len(images) != len(labels):
        raise ValueError(f"MNIST {split}: {len(images)} images but {len(labels)} labels")
    if labels.size and labels.max() > 9:
        raise ValueError(f"MNIST {split}: labels must be in 0..9, found {labels.max()}")
    return images, labels


def normalize(images, dtype=np.float32):
    """Scale to [0, 1], then standardise with the training set's MEAN and STD.

    images: uint8 (N, 28, 28). Returns (N, 1, 28, 28) in `dtype`: (images/255 - MEAN) / STD.
    Each step is rounded in `dtype`, in the order torchvision's ToTensor + Normalize use, so
    float32 inputs to the network are the ones a PyTorch MNIST script would see.
    """
    dtype = np.dtype(dtype)
    x = images.astype(dtype) / dtype.type(255)
    x = (x - dtype.type(MEAN)) / dtype.type(STD)
    return x[:, None]


# ----------------------------------------------------------------------------- batching

def num_batches(n, batch_size, drop_last=False):
    """Batches per epoch for `n` examples: floor(n / batch_size) if drop_last, else ceil."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    return n // batch_size if drop_last else -(-n // batch_size)


def epoch_permutation(n, seed, epoch):
    """The shuffled order of examples 0..n-1 for one epoch: int64 (n,).

    Derived only from (seed, epoch), never from a generator's running state, so a run resumed
    at any epoch draws exactly the order the uninterrupted run drew.
    """
    return np.random.default_rng([seed, epoch]).permutation(n).astype(np.int64)


def iterate_batches(images, labels, batch_size, seed, epoch, start_batch=0, shuffle=True,
                    drop_last=False):
    """Yield (x, y) batches of one epoch, in the order fixed by (seed, epoch).

    images: (N, ...) any dtype; labels: (N,). Yields x (B, ...) and y (B,) with B = batch_size,
    except a smaller last batch when N is not a multiple of it (dropped if drop_last).
    start_batch: the index of the first batch to yield; a run resumed from batch k sees the
    same batches k, k+1, ... that the uninterrupted run would have.
    shuffle: False keeps the stored order (for evaluation).
    """
    n = len(images)
    if len(labels) != n:
        raise ValueError(f"{n} images but {len(labels)} labels")
    total = num_batches(n, batch_size, drop_last)
    if not 0 <= start_batch <= total:
        raise ValueError(f"start_batch must be in 0..{total}, got {start_batch}")
    order = epoch_permutation(n, seed, epoch) if shuffle else np.arange(n, dtype=np.int64)
    for b in range(start_batch, total):
        index = order[b * batch_size: (b + 1) * batch_size]
        yield images[index], labels[index]

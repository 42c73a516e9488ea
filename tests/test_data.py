"""Tests for mnist.data: IDX parsing, where the data is, verified downloads, batching.

Everything runs on small synthetic IDX files and a local HTTP server on 127.0.0.1, except
the real-MNIST test, which needs NANOTORCH_DATA (CI sets it) and never touches the network.
"""
import contextlib
import functools
import gzip
import hashlib
import http.server
import io
import logging
import os
import re
import socket
import threading
from pathlib import Path

import numpy as np
import pytest

from mnist import data
from mnist.data import (
    MnistChecksumError,
    MnistDownloadError,
    download_mnist,
    epoch_permutation,
    iterate_batches,
    load_mnist,
    normalize,
    num_batches,
    read_idx,
    resolve_data_dir,
)

CODES = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C,
         np.float32: 0x0D, np.float64: 0x0E}
ALL_FILES = [name for pair in data.SPLITS.values() for name in pair]


def idx_bytes(array):
    """The IDX encoding of `array`: header, then big-endian values."""
    array = np.asarray(array)
    header = bytes([0, 0, CODES[array.dtype.type], array.ndim])
    header += b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def fake_mnist(n_train=7, n_test=5, seed=0):
    """{canonical .gz name: decompressed IDX bytes} for a tiny MNIST-shaped data set."""
    rng = np.random.default_rng(seed)
    contents = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images_name, labels_name = data.SPLITS[split]
        contents[images_name] = idx_bytes(rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        contents[labels_name] = idx_bytes(np.arange(n, dtype=np.uint8) % 10)
    return contents


def checksums_of(contents):
    return {name[:-3]: hashlib.sha256(raw).hexdigest() for name, raw in contents.items()}


def write_files(directory, contents, compress=True):
    directory.mkdir(parents=True, exist_ok=True)
    for name, raw in contents.items():
        if compress:
            (directory / name).write_bytes(gzip.compress(raw))
        else:
            (directory / name[:-3]).write_bytes(raw)


# ----------------------------------------------------------------------------- IDX parsing

@pytest.mark.parametrize("dtype", list(CODES))
@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_round_trip(tmp_path, dtype, compress):
    array = (np.arange(2 * 3 * 4) - 5).astype(dtype).reshape(2, 3, 4)
    raw = idx_bytes(array)
    # Names lie on purpose: gzip must be detected by its magic bytes, not the suffix.
    path = tmp_path / ("data.raw" if compress else "data.gz")
    path.write_bytes(gzip.compress(raw) if compress else raw)
    for source in (path, str(path)):
        out = read_idx(source)
        assert out.dtype == np.dtype(dtype) and out.dtype.isnative
        assert out.shape == (2, 3, 4)
        np.testing.assert_array_equal(out, array)
    with open(path, "rb") as f:
        np.testing.assert_array_equal(read_idx(f), array)
    assert read_idx(io.BytesIO(raw)).flags.writeable


def test_read_idx_one_dimension(tmp_path):
    labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    (tmp_path / "labels").write_bytes(idx_bytes(labels))
    np.testing.assert_array_equal(read_idx(tmp_path / "labels", ndim=1), labels)


@pytest.mark.parametrize("header", [b"\x00\x01\x08\x01", b"\x08\x03\x00\x00", b"\x00\x00\x07\x01",
                                    b"\x00\x00", b""])
def test_bad_magic(tmp_path, header):
    path = tmp_path / "bad-magic"
    path.write_bytes(header + b"\x00\x00\x00\x01\x07")
    with pytest.raises(ValueError, match="not an IDX file") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_truncated_payload(tmp_path):
    path = tmp_path / "short.gz"
    raw = idx_bytes(np.zeros((3, 28, 28), dtype=np.uint8))
    path.write_bytes(gzip.compress(raw[:-1]))
    with pytest.raises(ValueError) as info:
        read_idx(path)
    message = str(info.value)
    assert str(path) in message and "truncated" in message
    assert str(len(raw)) in message and str(len(raw) - 1) in message  # expected vs found


def test_truncated_header(tmp_path):
    path = tmp_path / "short-header"
    path.write_bytes(b"\x00\x00\x08\x03\x00\x00\x00\x02")
    with pytest.raises(ValueError, match="truncated header") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_trailing_bytes(tmp_path):
    path = tmp_path / "long"
    raw = idx_bytes(np.zeros(10, dtype=np.uint8))
    path.write_bytes(raw + b"\x00")
    with pytest.raises(ValueError, match="trailing bytes") as info:
        read_idx(path)
    assert str(path) in str(info.value)
    assert f"needs {len(raw)} bytes" in str(info.value)
    assert f"found {len(raw) + 1}" in str(info.value)


def test_wrong_number_of_dimensions(tmp_path):
    path = tmp_path / "flat"
    path.write_bytes(idx_bytes(np.zeros((4, 784), dtype=np.uint8)))
    with pytest.raises(ValueError, match="expected an IDX file with 3 dimension") as info:
        read_idx(path, ndim=3)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("which", ["images", "labels"])
def test_load_rejects_wrong_dimensions(tmp_path, which):
    contents = fake_mnist()
    images_name, labels_name = data.SPLITS["train"]
    if which == "images":  # flattened images: (N, 784) instead of (N, 28, 28)
        contents[images_name] = idx_bytes(np.zeros((7, 784), dtype=np.uint8))
    else:  # labels as a column: (N, 1) instead of (N,)
        contents[labels_name] = idx_bytes(np.zeros((7, 1), dtype=np.uint8))
    write_files(tmp_path, contents)
    bad_name = images_name if which == "images" else labels_name
    with pytest.raises(ValueError, match="dimension") as info:
        load_mnist("train", data_dir=tmp_path, download=False, checksums=checksums_of(contents))
    assert bad_name in str(info.value)


@pytest.mark.parametrize("payload", [b"\x1f\x8bnot really gzip at all",
                                     gzip.compress(b"\x00" * 5000)[:-12]])
def test_corrupt_gzip(tmp_path, payload):
    path = tmp_path / "broken.gz"
    path.write_bytes(payload)
    with pytest.raises(ValueError, match="corrupt gzip") as info:
        read_idx(path)
    assert str(path) in str(info.value)


# ------------------------------------------------------------------- loading and checksums

@pytest.mark.parametrize("compress", [True, False])
def test_load_synthetic(tmp_path, compress):
    contents = fake_mnist()
    write_files(tmp_path, contents, compress=compress)
    images, labels = load_mnist("test", data_dir=tmp_path, download=False,
                                checksums=checksums_of(contents))
    assert images.shape == (5, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (5,) and labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, [0, 1, 2, 3, 4])
    x = normalize(images, dtype=np.float64)
    assert x.shape == (5, 1, 28, 28) and x.dtype == np.float64
    np.testing.assert_allclose(x[:, 0], (images / 255 - data.MEAN) / data.STD)
    assert normalize(images).dtype == np.float32


def test_checksum_mismatch_names_file_and_says_what_to_do(tmp_path):
    write_files(tmp_path, fake_mnist())  # right shapes, wrong content for the real table
    with pytest.raises(MnistChecksumError) as info:
        load_mnist("train", data_dir=tmp_path, download=False)
    message = str(info.value)
    assert str(tmp_path / "train-images-idx3-ubyte.gz") in message
    assert data.SHA256["train-images-idx3-ubyte"] in message  # expected
    assert hashlib.sha256(fake_mnist()["train-images-idx3-ubyte.gz"]).hexdigest() in message
    assert "delete it to re-download" in message
    assert "--data-dir" in message and "NANOTORCH_DATA" in message


def test_labels_out_of_range_and_count_mismatch(tmp_path):
    contents = fake_mnist()
    contents["train-labels-idx1-ubyte.gz"] = idx_bytes(np.full(7, 10, dtype=np.uint8))
    write_files(tmp_path, contents)
    with pytest.raises(ValueError, match="0..9"):
        load_mnist("train", data_dir=tmp_path, download=False, checksums=checksums_of(contents))
    contents["train-labels-idx1-ubyte.gz"] = idx_bytes(np.zeros(6, dtype=np.uint8))
    write_files(tmp_path, contents)
    with pytest.raises(ValueError, match="7 images but 6 labels"):
        load_mnist("train", data_dir=tmp_path, download=False, checksums=checksums_of(contents))


def test_missing_without_download_says_where_to_put_files(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_mnist("train", data_dir=tmp_path / "empty", download=False)
    message = str(info.value)
    assert "train-images-idx3-ubyte.gz" in message and str(tmp_path / "empty") in message
    assert "--data-dir" in message and "NANOTORCH_DATA" in message


@pytest.mark.parametrize("given", ["mnist/mnist", "."], ids=["one-down", "one-up"])
def test_a_data_folder_one_level_off_is_named_not_downloaded_into(tmp_path, given, monkeypatch):
    """NANOTORCH_DATA set to the mnist/ folder itself, or --data-dir to the data home: the error
    names the folder that holds the files, at once, and nothing is created or downloaded."""
    contents = fake_mnist()
    write_files(tmp_path / "mnist", contents)
    monkeypatch.setattr(data, "_download", lambda *a, **k: pytest.fail("tried to download"))
    kw = dict(checksums=checksums_of(contents))
    if given == ".":
        call = lambda: load_mnist("train", data_dir=tmp_path, **kw)            # noqa: E731
    else:
        monkeypatch.setenv("NANOTORCH_DATA", str(tmp_path / "mnist"))
        call = lambda: load_mnist("train", **kw)                                # noqa: E731
    with pytest.raises(FileNotFoundError) as info:
        call()
    message = str(info.value)
    assert f"in {tmp_path / 'mnist'}: pass --data-dir {tmp_path / 'mnist'}" in message
    assert f"NANOTORCH_DATA={tmp_path}" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mnist"]
    assert not (tmp_path / "mnist" / "mnist").exists()


def test_files_of_the_same_names_one_level_off_but_not_mnist_are_not_named(tmp_path, monkeypatch):
    """Fashion-MNIST's files have MNIST's names: a folder is named only if its files check out."""
    contents = fake_mnist()
    write_files(tmp_path / "mnist", fake_mnist(seed=1))                     # same names, other content
    monkeypatch.setattr(data, "_download", lambda *a, **k: (_ for _ in ()).throw(MnistDownloadError("tried")))
    with pytest.raises(MnistDownloadError, match="tried"):
        load_mnist("train", data_dir=tmp_path, checksums=checksums_of(contents))


def test_a_failed_connection_is_one_short_line():
    e = data.requests.ConnectionError("HTTPSConnectionPool(host='h.example', port=443): Max retries exceeded "
                                      "(Caused by NameResolutionError(\"Failed to resolve 'h.example'\"))")
    assert data._reason(e, "https://h.example/mnist/x.gz") == \
        "ConnectionError: cannot resolve h.example (no network, or no DNS)"
    assert data._reason(data.requests.ReadTimeout("..."), "https://h.example/x") == \
        "ReadTimeout: h.example did not answer in time"
    refused = data.requests.ConnectionError("HTTPSConnectionPool(...): Max retries exceeded (Caused by NewConnection"
                                            "Error('...: Failed to establish a new connection: [Errno 111] "
                                            "Connection refused'))")
    assert data._reason(refused, "https://h.example/x") == \
        "ConnectionError: cannot connect to h.example ([Errno 111] Connection refused)"
    ssl = data.requests.exceptions.SSLError("HTTPSConnectionPool(...): (Caused by SSLError(SSLCertVerificationError("
                                            "1, '[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: "
                                            "self-signed certificate in certificate chain (_ssl.c:1006)')))")
    assert data._reason(ssl, "https://h.example/x") == ("SSLError: h.example: certificate verify failed: "
                                                        "self-signed certificate in certificate chain (_ssl.c:1006)")


def test_unknown_split(tmp_path):
    with pytest.raises(ValueError, match="split"):
        load_mnist("validation", data_dir=tmp_path, download=False)


# ----------------------------------------------------------------------------- where the data is

def test_resolve_data_dir_order(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("NANOTORCH_DATA", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert resolve_data_dir() == tmp_path / "home" / ".cache" / "nanotorch" / "mnist"

    monkeypatch.setenv("XDG_CACHE_HOME", "")  # empty counts as unset
    assert resolve_data_dir() == tmp_path / "home" / ".cache" / "nanotorch" / "mnist"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resolve_data_dir() == tmp_path / "xdg" / "nanotorch" / "mnist"

    monkeypatch.setenv("NANOTORCH_DATA", str(tmp_path / "datahome"))
    assert resolve_data_dir() == tmp_path / "datahome" / "mnist"

    assert resolve_data_dir(tmp_path / "explicit") == tmp_path / "explicit"
    assert resolve_data_dir(str(tmp_path / "explicit")) == tmp_path / "explicit"
    monkeypatch.chdir(tmp_path)
    assert resolve_data_dir("relative") == tmp_path / "relative"  # made absolute for messages


def test_an_empty_nanotorch_data_or_data_dir_counts_as_unset(tmp_path, monkeypatch):
    """Not the folder mnist/ under the current directory (Path('') / 'mnist')."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("NANOTORCH_DATA", "")
    monkeypatch.chdir(tmp_path)
    assert resolve_data_dir() == tmp_path / "xdg" / "nanotorch" / "mnist"
    assert resolve_data_dir("") == tmp_path / "xdg" / "nanotorch" / "mnist"     # --data-dir "": not the cwd


def test_load_uses_nanotorch_data(tmp_path, monkeypatch):
    contents = fake_mnist()
    write_files(tmp_path / "home" / "mnist", contents)
    monkeypatch.setenv("NANOTORCH_DATA", str(tmp_path / "home"))
    images, _ = load_mnist("train", download=False, checksums=checksums_of(contents))
    assert images.shape == (7, 28, 28)


# ----------------------------------------------------------------------------- downloading

class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@contextlib.contextmanager
def serving(tmp_path, monkeypatch, handler):
    """A file server on 127.0.0.1 (ephemeral port) over tmp_path/www with ``handler``; yields
    (root, base URL)."""
    root = tmp_path / "www"
    root.mkdir()
    # A proxy from the environment must not intercept requests to the local server.
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{httpd.server_port}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture
def server(tmp_path, monkeypatch):
    """A plain file server over tmp_path/www; yields (root, base URL)."""
    with serving(tmp_path, monkeypatch, _QuietHandler) as served:
        yield served


def closed_port_url():
    """A URL on 127.0.0.1 where nothing listens: connections are refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/mnist/"


FAST = dict(timeout=5, attempts=2, backoff=0, progress=False)


def test_download_falls_back_to_the_next_mirror(tmp_path, server, caplog, monkeypatch):
    root, base = server
    contents = fake_mnist()
    write_files(root / "good", contents)
    target = tmp_path / "cache"
    replaced = []
    real_replace = os.replace

    def spy_replace(src, dst):
        # The final file must not exist until the complete, verified temp file is renamed
        # onto it, and the rename must stay within one directory (so it is atomic).
        assert not Path(dst).exists()
        assert Path(src).parent == Path(dst).parent
        replaced.append(Path(dst))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy_replace)
    mirrors = [f"{base}/missing/", f"{base}/good"]  # the first 404s; no trailing slash is fine
    with caplog.at_level(logging.WARNING, logger="mnist.data"):
        paths = download_mnist(target, mirrors=mirrors, checksums=checksums_of(contents), **FAST)

    assert sorted(replaced) == sorted(target / name for name in ALL_FILES) == sorted(paths)
    assert sorted(p.name for p in target.iterdir()) == sorted(ALL_FILES)  # no temp files left
    assert "404" in caplog.text and f"{base}/missing/train-images-idx3-ubyte.gz" in caplog.text
    for name, raw in contents.items():
        assert gzip.decompress((target / name).read_bytes()) == raw

    # Now present: loading verifies and reads them without any request.
    images, labels = load_mnist("train", data_dir=target, mirrors=[closed_port_url()],
                                checksums=checksums_of(contents))
    assert images.shape == (7, 28, 28) and labels.shape == (7,)


def test_downloaded_files_get_the_usual_mode_and_are_synced(tmp_path, server, monkeypatch):
    """Not mkstemp's 0600: a shared $NANOTORCH_DATA must stay readable by the others sharing it."""
    root, base = server
    contents = fake_mnist()
    write_files(root / "mnist", contents)
    synced, real_fsync = [], os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))
    umask = os.umask(0o022)
    try:
        paths = download_mnist(tmp_path / "cache", mirrors=[f"{base}/mnist/"], checksums=checksums_of(contents),
                               **FAST)
    finally:
        os.umask(umask)
    assert len(paths) == 4 and len(synced) == 4
    for path in paths:
        assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~0o022), path


def test_load_mnist_downloads_only_its_split(tmp_path, server):
    root, base = server
    contents = fake_mnist()
    write_files(root / "mnist", contents)
    target = tmp_path / "cache"
    images, labels = load_mnist("test", data_dir=target, mirrors=[f"{base}/mnist/"],
                                checksums=checksums_of(contents))
    assert images.shape == (5, 28, 28) and labels.shape == (5,)
    assert sorted(p.name for p in target.iterdir()) == sorted(data.SPLITS["test"])


def test_a_data_dir_that_is_a_file_is_named_so(tmp_path):
    """Not "missing from FILE, which cannot be written to download it into (File exists)"."""
    (tmp_path / "model.npz").write_bytes(b"")
    for download in (True, False):
        with pytest.raises(NotADirectoryError, match=rf"^{re.escape(str(tmp_path / 'model.npz'))} is a file, not a "
                                                     r"folder: the MNIST files are looked for in a folder"):
            load_mnist("test", data_dir=tmp_path / "model.npz", download=download, mirrors=["http://127.0.0.1:9/"])


def test_a_missing_file_in_a_folder_that_cannot_be_written(tmp_path, monkeypatch):
    """The error says the file is missing and the folder is not writable (it named the download's
    temp file). Root ignores permissions, so the refusal is simulated."""
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / ".t10k-images-idx3-ubyte.gz.x.part"))
    monkeypatch.setattr(data.tempfile, "mkstemp", refuse)
    with pytest.raises(PermissionError) as info:
        load_mnist("test", data_dir=tmp_path, mirrors=["http://127.0.0.1:9/"])
    message = str(info.value)
    assert message.startswith(f"t10k-images-idx3-ubyte.gz is missing from {tmp_path}, which cannot be written")
    assert info.value.errno == 13                             # (kept, but not printed as "[Errno 13] ...")
    assert "Permission denied" in message and ".part" not in message and "--data-dir" in message


def test_corrupt_mirror_is_skipped(tmp_path, server, caplog):
    root, base = server
    contents = fake_mnist()
    write_files(root / "good", contents)
    write_files(root / "corrupt", fake_mnist(seed=1))  # valid gzip, wrong content
    (root / "garbage").mkdir()
    for name in ALL_FILES:  # an HTML error page served with status 200
        (root / "garbage" / name).write_bytes(b"<html>Service unavailable</html>")
    target = tmp_path / "cache"
    mirrors = [f"{base}/corrupt/", f"{base}/garbage/", f"{base}/good/"]
    with caplog.at_level(logging.WARNING, logger="mnist.data"):
        download_mnist(target, mirrors=mirrors, splits=("train",),
                       checksums=checksums_of(contents), **FAST)
    assert "checksum mismatch" in caplog.text and f"{base}/corrupt/" in caplog.text
    assert f"{base}/garbage/" in caplog.text
    assert sorted(p.name for p in target.iterdir()) == sorted(data.SPLITS["train"])
    load_mnist("train", data_dir=target, download=False, checksums=checksums_of(contents))


def test_uncompressed_download_is_kept_under_the_plain_name(tmp_path, server):
    root, base = server
    contents = fake_mnist()
    (root / "plain").mkdir()
    for name, raw in contents.items():  # as if the server had stripped the gzip layer
        (root / "plain" / name).write_bytes(raw)
    target = tmp_path / "cache"
    download_mnist(target, mirrors=[f"{base}/plain/"], splits=("test",),
                   checksums=checksums_of(contents), **FAST)
    assert sorted(p.name for p in target.iterdir()) == sorted(n[:-3] for n in data.SPLITS["test"])
    load_mnist("test", data_dir=target, download=False, checksums=checksums_of(contents))


class _FlakyHandler(http.server.SimpleHTTPRequestHandler):
    """Serves tmp_path/www, except that the first request for each path under /busy/, /limited/ and
    /cut/ fails: 503, 429, or a 200 whose body stops halfway (the connection closed); every request
    is counted, by path."""
    requests = None          # path -> number of requests (set per server)

    def log_message(self, *args):
        pass

    def do_GET(self):
        n = self.requests[self.path] = self.requests.get(self.path, 0) + 1
        if n == 1 and self.path.startswith(("/busy/", "/limited/")):
            self.send_error(503 if self.path.startswith("/busy/") else 429)
            return
        if n == 1 and self.path.startswith("/cut/"):
            body = (Path(self.directory) / self.path.lstrip("/")).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        super().do_GET()


@pytest.fixture
def flaky_server(tmp_path, monkeypatch):
    """Like ``server``, with _FlakyHandler: yields (root, base URL, requests by path)."""
    counts = {}
    with serving(tmp_path, monkeypatch, type("Handler", (_FlakyHandler,), {"requests": counts})) as (root, base):
        yield root, base, counts


@pytest.mark.parametrize("folder", ["busy", "limited", "cut"])
def test_a_5xx_a_429_or_a_cut_download_is_retried_from_scratch_on_the_same_mirror(tmp_path, flaky_server, folder):
    """503 and 429 may pass and a download cut halfway may succeed next time: retried on the same
    mirror (with the file emptied first, so the retry is not appended to the cut half)."""
    root, base, counts = flaky_server
    contents = fake_mnist(n_test=400)        # images of ~300 KiB: the cut half spans several 64 KiB chunks
    write_files(root / folder, contents)
    target = tmp_path / "cache"
    paths = download_mnist(target, mirrors=[f"{base}/{folder}/"], splits=("test",),
                           checksums=checksums_of(contents), **FAST)
    assert [p.name for p in paths] == list(data.SPLITS["test"])
    assert counts == {f"/{folder}/{name}": 2 for name in data.SPLITS["test"]}
    for name in data.SPLITS["test"]:
        assert gzip.decompress((target / name).read_bytes()) == contents[name]


def test_a_404_is_not_retried(tmp_path, flaky_server):
    root, base, counts = flaky_server
    contents = fake_mnist()
    write_files(root / "good", contents)
    download_mnist(tmp_path / "cache", mirrors=[f"{base}/missing/", f"{base}/good/"], splits=("test",),
                   checksums=checksums_of(contents), **FAST)
    assert {path: n for path, n in counts.items() if path.startswith("/missing/")} == {
        f"/missing/{name}": 1 for name in data.SPLITS["test"]}


def test_every_mirror_failing(tmp_path, server, caplog, monkeypatch):
    root, base = server
    monkeypatch.setattr(data, "BACKOFF", 0)  # load_mnist retries with the module defaults
    contents = fake_mnist()
    write_files(root / "corrupt", fake_mnist(seed=1))
    target = tmp_path / "cache"
    refused = closed_port_url()
    mirrors = [f"{base}/missing/", refused, f"{base}/corrupt/"]
    with caplog.at_level(logging.WARNING, logger="mnist.data"):
        with pytest.raises(MnistDownloadError) as info:
            load_mnist("train", data_dir=target, mirrors=mirrors, checksums=checksums_of(contents))
    assert isinstance(info.value, RuntimeError)
    message = str(info.value)
    assert "train-images-idx3-ubyte.gz" in message
    assert f"{base}/missing/train-images-idx3-ubyte.gz: HTTP 404" in message
    assert f"{refused}train-images-idx3-ubyte.gz: ConnectionError" in message
    assert "after 2 attempt(s)" in message  # connection errors are retried, 404s are not
    assert f"{base}/corrupt/train-images-idx3-ubyte.gz: checksum mismatch" in message
    assert str(target) in message and "--data-dir" in message and "NANOTORCH_DATA" in message
    assert not target.exists()  # no partial or temp file left behind, nor the folder made for them
    # Progress on the way, but the last mirror's answer only once: in the error.
    assert "trying the next mirror" in caplog.text and "/corrupt/" not in caplog.text


# ----------------------------------------------------------------------------- real MNIST

@pytest.fixture(scope="module")
def real_mnist():
    if not os.environ.get("NANOTORCH_DATA"):
        pytest.skip("NANOTORCH_DATA is unset; set it to a data home holding mnist/ "
                    "(e.g. NANOTORCH_DATA=../shared/data) to test the real files")
    # download=False: this test checks the files that are there, it never fetches them.
    return {split: load_mnist(split, download=False) for split in ("train", "test")}


def test_real_mnist(real_mnist):
    (train_x, train_y), (test_x, test_y) = real_mnist["train"], real_mnist["test"]
    assert train_x.shape == (60000, 28, 28) and train_y.shape == (60000,)
    assert test_x.shape == (10000, 28, 28) and test_y.shape == (10000,)
    assert train_x.dtype == test_x.dtype == train_y.dtype == np.uint8
    # Every digit is common: the rarest (5) has 5421 training and 892 test examples.
    assert np.bincount(train_y, minlength=10).min() > 5000
    assert np.bincount(test_y, minlength=10).min() > 800
    assert train_x.max() == 255 and train_x.min() == 0

    x = normalize(train_x)
    assert x.shape == (60000, 1, 28, 28) and x.dtype == np.float32
    assert abs(float(x.mean(dtype=np.float64))) < 0.01
    assert abs(float(x.std(dtype=np.float64)) - 1) < 0.01


# ----------------------------------------------------------------------------- batching

def test_num_batches():
    assert num_batches(10, 3) == 4 and num_batches(10, 3, drop_last=True) == 3
    assert num_batches(9, 3) == num_batches(9, 3, drop_last=True) == 3
    assert num_batches(0, 3) == 0
    with pytest.raises(ValueError):
        num_batches(10, 0)


def test_epoch_permutation_depends_only_on_seed_and_epoch():
    p = epoch_permutation(100, seed=1, epoch=0)
    assert p.dtype == np.int64 and sorted(p) == list(range(100))
    np.testing.assert_array_equal(p, epoch_permutation(100, seed=1, epoch=0))
    assert not np.array_equal(p, epoch_permutation(100, seed=1, epoch=1))
    assert not np.array_equal(p, epoch_permutation(100, seed=2, epoch=0))


def test_epoch_permutations_of_different_seeds_differ_at_every_epoch():
    """Seed 1's first epoch is not seed 0's second (as a seed + epoch derivation would make it)."""
    orders = {tuple(epoch_permutation(50, seed, epoch)) for seed in range(3) for epoch in range(3)}
    assert len(orders) == 9


def _epoch(n, batch_size, **kwargs):
    images = np.arange(n)[:, None] * np.ones((1, 3), dtype=np.int64)  # row i holds i
    labels = np.arange(n)
    batches = list(iterate_batches(images, labels, batch_size, **kwargs))
    for x, y in batches:
        np.testing.assert_array_equal(x[:, 0], y)  # images and labels stay paired
    return [y for _, y in batches]


def test_iterate_batches_each_index_once_and_last_partial_batch():
    batches = _epoch(10, 4, seed=0, epoch=0)
    assert [len(b) for b in batches] == [4, 4, 2]
    assert sorted(np.concatenate(batches)) == list(range(10))
    np.testing.assert_array_equal(np.concatenate(batches), epoch_permutation(10, 0, 0))

    dropped = _epoch(10, 4, seed=0, epoch=0, drop_last=True)
    assert [len(b) for b in dropped] == [4, 4]
    np.testing.assert_array_equal(np.concatenate(dropped), np.concatenate(batches)[:8])

    in_order = _epoch(10, 4, seed=0, epoch=0, shuffle=False)
    np.testing.assert_array_equal(np.concatenate(in_order), np.arange(10))


def test_iterate_batches_order_is_reproducible():
    a = np.concatenate(_epoch(50, 8, seed=3, epoch=2))
    b = np.concatenate(_epoch(50, 8, seed=3, epoch=2))
    c = np.concatenate(_epoch(50, 8, seed=3, epoch=3))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("start", [0, 1, 4, 6, 7])
def test_iterate_batches_resumes_exactly(start):
    full = _epoch(50, 8, seed=5, epoch=1)  # 7 batches, the last of 2
    resumed = _epoch(50, 8, seed=5, epoch=1, start_batch=start)
    assert len(resumed) == len(full) - start
    for r, f in zip(resumed, full[start:]):
        np.testing.assert_array_equal(r, f)


def test_iterate_batches_rejects_bad_arguments():
    x, y = np.zeros((10, 2)), np.zeros(10)
    with pytest.raises(ValueError, match="start_batch"):
        next(iterate_batches(x, y, 4, seed=0, epoch=0, start_batch=4))
    with pytest.raises(ValueError, match="labels"):
        next(iterate_batches(x, y[:9], 4, seed=0, epoch=0))

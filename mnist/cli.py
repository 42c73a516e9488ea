"""What the command lines share: mnist.train's, mnist.evaluate's and the benchmarks' (which import it)."""
import os
import sys


def run(main):
    """sys.exit(main()), but quietly when the reader of stdout stops early (``... | head``): Python would
    print a BrokenPipeError traceback, where a command-line tool just stops, with status 141 (128 +
    SIGPIPE) as a shell reports one killed by that signal."""
    try:
        status = main()
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())   # (else the flush at exit fails again)
        status = 141
    sys.exit(status)


class ReaderMayLeave:
    """A text stream (sys.stdout, sys.stderr) whose reader may stop early without stopping the program:
    once a write or flush finds the pipe closed (BrokenPipeError), the stream's file descriptor is
    pointed at /dev/null and what is written is dropped from then on. Everything else is the stream's."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text):
        try:
            return self.stream.write(text)
        except BrokenPipeError:
            self._drop()
            return len(text)

    def flush(self):
        try:
            self.stream.flush()
        except BrokenPipeError:
            self._drop()

    def _drop(self):
        os.dup2(os.open(os.devnull, os.O_WRONLY), self.stream.fileno())   # (what the buffer held goes there too)

    def __getattr__(self, name):
        return getattr(self.stream, name)


def keep_running_without_readers():
    """For a program whose results are files, not its output (mnist.train: the run folder): when the
    reader of stdout or stderr stops early (``python -m mnist.train | head``, or with ``2>&1``), the
    rest of that output is dropped and the program goes on, where Python would raise BrokenPipeError
    at its next print and end the run half-way. (``run`` is for programs whose output is the result:
    they stop.)"""
    sys.stdout, sys.stderr = ReaderMayLeave(sys.stdout), ReaderMayLeave(sys.stderr)


def check_counts(ap, args, flags):
    """ap.error unless every value of these flags (argparse dests; a value may be a list, for nargs="+")
    is >= 1 or None, which stands for the flag's default."""
    for flag in flags:
        value = getattr(args, flag)
        for v in value if isinstance(value, list) else [value]:
            if v is not None and v < 1:
                ap.error(f"--{flag.replace('_', '-')} must be >= 1, got {v}")


def listed(names, most=4):
    """Names for a one-line message: all of them if there are at most ``most``, else the first three,
    "..." and how many there are."""
    names = list(names)
    return ", ".join(names) if len(names) <= most else f"{', '.join(names[:3])}, ... ({len(names)} in all)"

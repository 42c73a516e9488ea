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


def check_counts(ap, args, flags):
    """ap.error unless every value of these flags (argparse dests; a value may be a list, for nargs="+")
    is >= 1 or None, which stands for the flag's default."""
    for flag in flags:
        value = getattr(args, flag)
        for v in value if isinstance(value, list) else [value]:
            if v is not None and v < 1:
                ap.error(f"--{flag.replace('_', '-')} must be >= 1, got {v}")

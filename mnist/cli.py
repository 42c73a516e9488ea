"""What the command lines share: mnist.train's, mnist.evaluate's and the benchmarks' (which import it)."""


def check_counts(ap, args, flags):
    """ap.error unless every value of these flags (argparse dests; a value may be a list, for nargs="+")
    is >= 1 or None, which stands for the flag's default."""
    for flag in flags:
        value = getattr(args, flag)
        for v in value if isinstance(value, list) else [value]:
            if v is not None and v < 1:
                ap.error(f"--{flag.replace('_', '-')} must be >= 1, got {v}")

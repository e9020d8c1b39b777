"""Helpers shared by the CLI tests (tests/ is on sys.path under pytest's default import mode)."""


def cli_output(result) -> str:
    """Everything a CliRunner invocation printed, stdout and stderr."""
    out = result.output
    try:
        out += result.stderr
    except (ValueError, AttributeError):  # click < 8.2 mixes stderr into output
        pass
    return out

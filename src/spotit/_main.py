"""The `spotit` command's entry point: loading the modules can take a second, and a Ctrl-C meanwhile is
answered like one at any other time, in one line."""

import sys


def main() -> int:
    try:
        from .cli import main as cli_main
    except KeyboardInterrupt:
        print("spotit: interrupted", file=sys.stderr)
        return 130
    return cli_main()

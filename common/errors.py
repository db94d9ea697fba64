"""The one exception type a user ever sees: a single sentence that names the fix."""
import argparse
import functools
import sys


class UserError(Exception):
    """Bad input or environment. The CLI prints the message alone, on one line, and exits non-zero."""


def one_line(message: str) -> str:
    """The message with anything that would break or hide the line (control characters, line and
    paragraph separators a user may have typed into an argument) written as an escape."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(message))


class OneLineParser(argparse.ArgumentParser):
    """argparse for the commands: a bad argument raises UserError (one line, exit 2 from the command)
    instead of printing the usage block."""

    def error(self, message):
        raise UserError(f"{message} (see {self.prog} --help).")


def command_line(main):
    """A command's main(argv) -> exit code, with a UserError written as one line on stderr (exit 2)
    and Ctrl-C as one line too (exit 130), never a traceback."""
    @functools.wraps(main)
    def run(argv: list[str] | None = None) -> int:
        try:
            return main(argv)
        except UserError as e:
            print(f"error: {one_line(e)}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted.", file=sys.stderr)
            return 130
    return run

"""`limaml` command line. Each command lives in its own module with `add_parser(subparsers)`.

The commands are applications of the library: they may import `limaml_tf` and `beam_pipelines`;
no library module imports them.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import tempfile

# module path -> registers one or more subcommands
COMMAND_MODULES = [
    "limaml_cli.demo",
    "limaml_cli.train",
    "limaml_cli.serve",
    "limaml_cli.refresh",
    "limaml_cli.reproduce",
]
LOG_FILE = "limaml.log"


class Parser(argparse.ArgumentParser):
    """A usage error is one line naming the argument, on the console (see `Console`), and exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (`{self.prog} --help` shows the options and an example)\n")

    def _print_message(self, message, file=None):
        if message:
            ((Console.stream or sys.stderr) if file is None or file is sys.stderr else file).write(message)


def add_command(sub, name: str, help: str, examples: str, **kwargs) -> argparse.ArgumentParser:
    """A subcommand whose --help ends with `examples` (command lines, one per line) and that takes
    --verbose / --log-file (see `Console`)."""
    p = sub.add_parser(name, help=help, description=kwargs.pop("description", help),
                       epilog="example:\n" + "\n".join(f"  {line}" for line in examples.strip().splitlines()),
                       formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)
    add_output_flags(p, argparse.SUPPRESS)
    return p


def add_output_flags(p, default=None) -> None:
    p.add_argument("--verbose", dest="show_logs", action="store_true", default=default or False,
                   help="show TensorFlow / Beam / absl logs and Keras' own progress lines here")
    p.add_argument("--log-file", default=default,
                   help=f"where those logs go otherwise (default: {LOG_FILE} in the command's output directory, "
                        "else in the temp directory)")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="limaml", description=__doc__.splitlines()[0])
    parser.add_argument("--traceback", action="store_true",
                        help="show the Python traceback of an error (also: LIMAML_TRACEBACK=1)")
    add_output_flags(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parser(sub)
    return parser


def log_file(args) -> str:
    """--log-file, else limaml.log in the directory the command writes (its `log_dir` default names
    the option holding it), else in the temp directory."""
    if args.log_file:
        return args.log_file
    out_dir = getattr(args, getattr(args, "log_dir", "") or "", None)
    return os.path.join(out_dir, LOG_FILE) if out_dir else os.path.join(tempfile.gettempdir(),
                                                                         f"limaml-{args.command}.log")


class Console:
    """Quiet mode: file descriptor 2 goes to a log file, so TensorFlow's C++ and absl logs, Python
    warnings and logging, and Beam's worker processes (which inherit it) write there. `stream` is the
    original stderr, for what the user must see: usage errors and the one-line error. The commands
    print their progress and results on stdout."""

    stream = None

    def __init__(self):
        sys.stderr.flush()
        self.saved = os.dup(2)
        try:  # a real stderr: keep a stream on the original descriptor; else (a test's capture) use it
            sys.stderr.fileno()
            Console.stream = os.fdopen(os.dup(self.saved), "w", buffering=1)
        except (AttributeError, OSError, ValueError):
            Console.stream = sys.stderr
        fd, self.path = tempfile.mkstemp(prefix="limaml-", suffix=".log")  # until the command names its log
        self.temporary = True
        os.dup2(fd, 2)
        os.close(fd)

    def move_to(self, path: str) -> None:
        """Appends what was logged so far to `path` and logs there from now on."""
        from limaml_tf.artifacts import output_errors

        with output_errors(path):
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        sys.stderr.flush()
        with open(self.path, "rb") as f:
            os.write(fd, f.read())
        os.dup2(fd, 2)
        os.close(fd)
        os.remove(self.path)
        self.path, self.temporary = path, False

    def close(self) -> None:
        sys.stderr.flush()
        os.dup2(self.saved, 2)
        os.close(self.saved)
        if self.temporary:  # the command never ran (a usage error)
            os.remove(self.path)
        if Console.stream is not sys.stderr:
            Console.stream.close()
        Console.stream = None


def one_line(e: BaseException) -> str:
    """The error as one line: the message of the package's own errors (they name the field and the fix);
    for anything else, its type and the last line of its message (a Beam failure carries the worker's
    whole traceback)."""
    if isinstance(e, (ValueError, OSError)):
        return " ".join(str(e).split()) or type(e).__name__
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return f"{type(e).__name__}: {lines[-1][:500] if lines else ''} (--traceback shows where it came from)"


def main(argv=None) -> int:
    """Runs a command. A usage error exits 2 with one line (argparse); any other error prints one line
    `limaml <command>: error: <message>` on stderr and exits 1; --traceback / LIMAML_TRACEBACK=1 re-raise
    it. Unless --verbose, library logs go to a log file (`Console`) from the start (imports log too)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # the application's choice (before TensorFlow loads)
    argv = sys.argv[1:] if argv is None else list(argv)
    console = None if "--verbose" in argv or "-h" in argv or "--help" in argv else Console()
    try:
        args = build_parser().parse_args(argv)
        try:
            if console:
                console.move_to(log_file(args))
            return int(args.func(args) or 0)
        except KeyboardInterrupt:
            print(f"limaml {args.command}: interrupted", file=Console.stream or sys.stderr)
            return 130
        except Exception as e:
            if args.traceback or os.environ.get("LIMAML_TRACEBACK", "") not in ("", "0"):
                raise
            where = f" (log: {console.path})" if console and not isinstance(e, (ValueError, OSError)) else ""
            print(f"limaml {args.command}: error: {one_line(e)}{where}", file=Console.stream or sys.stderr)
            return 1
    finally:
        if console:
            console.close()


if __name__ == "__main__":
    sys.exit(main())

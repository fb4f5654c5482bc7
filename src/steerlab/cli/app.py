"""The ``steerlab`` command: the typer app, with every command group registered on it, and
:func:`main`, the entry point: parse, validate, call a job. Bad input: one stderr line, exit 2;
SIGINT/SIGTERM: one line, exit 130/143.

The commands live one group per module beside this one, each with a ``register(app)``."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

import typer
from pydantic import ValidationError

from steerlab.cli import behaviours as cli_behaviours
from steerlab.cli import classify as cli_classify
from steerlab.cli import code as cli_code
from steerlab.cli import explore as cli_explore
from steerlab.cli import questions as cli_questions
from steerlab.cli import reliability as cli_reliability
from steerlab.cli import sae as cli_sae
from steerlab.cli import sae_features as cli_sae_features
from steerlab.cli import vector_exchange as cli_vector_exchange
from steerlab.cli import vectors as cli_vectors
from steerlab.errors import SteerlabError

# recent typer vendors click as typer._click; older typer uses click itself
_click_exc: Any = importlib.import_module(
    "typer._click.exceptions" if importlib.util.find_spec("typer._click") else "click.exceptions"
)
ClickException = _click_exc.ClickException
NoArgsIsHelpError = _click_exc.NoArgsIsHelpError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="Activation steering for open language models: build vectors, steer generation, measure.",
)

# one module per command group; registration order is the order of ``steerlab --help``'s list
for _group in (
    cli_vectors,  # build-vector, generate, info
    cli_vector_exchange,  # export-vector, import-vector, push-vector
    cli_reliability,  # run, baseline, build-directions, sweep, sanity, report, make-prompts
    cli_explore,  # demo, find-layers
    cli_questions,  # eval-questions
    cli_code,  # select-coefficients
    cli_sae,  # sae-train
    cli_sae_features,  # sae-features
    cli_classify,  # classify
    cli_behaviours,  # behaviours
):
    _group.register(app)

INTERRUPTED = "interrupted; rerun the same command to resume"


class Interrupted(KeyboardInterrupt):
    """Raised by the SIGINT/SIGTERM handler so ``finally`` blocks and context managers run
    (atomic writes remove their temp files); ``signum`` picks the exit code, 128 + signum."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def _signals_raise() -> Iterator[list[int]]:
    """While active, SIGINT and SIGTERM raise :class:`Interrupted` in the main thread; the
    first signal received is appended to the yielded list and later ones are ignored, so
    cleanup is not cut short. The previous handlers are restored afterwards."""
    received: list[int] = []

    def handler(signum: int, frame: object) -> None:
        if not received:
            received.append(signum)
            raise Interrupted(signum)

    if threading.current_thread() is not threading.main_thread():
        yield received  # signal handlers can only be set from the main thread
        return
    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


def _abort_types() -> tuple[type[BaseException], ...]:
    """typer's Abort, plus click's own (another class when typer vendors click), if loaded."""
    click_exc = sys.modules.get("click.exceptions")
    return (typer.Abort,) if click_exc is None else (typer.Abort, click_exc.Abort)


def main(argv: list[str] | None = None) -> None:
    """Entry point: every expected failure becomes one line on stderr and exit code 2; SIGINT
    and SIGTERM become one line and exit 130 / 143."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    code: int = 0
    message: str | None = None
    with _signals_raise() as received:
        try:
            command = typer.main.get_command(app)
            # standalone_mode=False: typer turns KeyboardInterrupt into Exit(130) and typer.Exit
            # into a *returned* exit code, so the return value is the exit code
            rv = command.main(args=argv, prog_name="steerlab", standalone_mode=False)
            if isinstance(rv, int) and not isinstance(rv, bool):
                code = rv
            if code == 130:  # a KeyboardInterrupt that typer caught
                message = INTERRUPTED
        except KeyboardInterrupt:
            code, message = 130, INTERRUPTED
        except NoArgsIsHelpError as e:
            code = 2
            message = e.format_message() if hasattr(e, "format_message") else str(e)
        except _abort_types():
            code, message = 130, "aborted"  # e.g. EOF at a prompt (Ctrl-C there: see below)
        except ClickException as e:
            code, message = 2, f"error: {_one_line(e.format_message())}"
        except (SteerlabError, OSError) as e:
            code, message = 2, f"error: {_one_line(str(e))}"
        except ValidationError as e:  # a command's settings checked by their pydantic model
            code, message = 2, f"error: {_validation_line(e)}"
        except typer.Exit as e:
            code = e.exit_code
        if received:  # whatever was being unwound, a signal decides the exit code
            code, message = 128 + received[0], INTERRUPTED
    if message is not None:
        typer.echo(message, err=True)
    if code:
        sys.exit(code)


def _validation_line(e: ValidationError) -> str:
    """The first failed setting of a pydantic check as one line: ``invalid temperature: ...``."""
    errors = e.errors()
    if not errors:
        return _one_line(str(e))
    first = errors[0]
    loc = ".".join(str(part) for part in first.get("loc", ()))
    msg = str(first.get("msg", "")).removeprefix("Value error, ")
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return _one_line(f"invalid {loc or e.title}: {msg}{more}")


def _one_line(text: str) -> str:
    """Errors are one line on stderr, whatever a library put into the message."""
    return " ".join(text.split())


if __name__ == "__main__":
    main()

"""The ``ftsearch`` command: run, validate and inspect studies."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from search.study import StudyError, load_study

logger = logging.getLogger("search")

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class _TqdmHandler(logging.Handler):
    """Write log records above any progress bar instead of through it."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


def configure_logging(verbose: bool = False) -> None:
    """Send the ``search`` package's log to standard error: info by default, debug if verbose."""
    handler = _TqdmHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
    logger.handlers[:] = [handler]
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False


def _command_run(args: argparse.Namespace) -> int:
    from search.results import best_summary, format_table, trial_rows
    from search.runner import run

    study = load_study(args.study)
    resume = getattr(args, "resume", False)
    result = run(study, run_dir=args.run_dir, address=args.address, progress=not args.no_progress, resume=resume)
    rows = trial_rows(result.optuna_study)
    maximize = study.objective.resolved_direction == "maximize"
    print(format_table(rows, study.objective.metric, maximize))
    summary = best_summary(study, result.optuna_study)
    _print_best(summary)
    if summary is not None:
        _print_front(study, summary)
    print(f"Results: {result.run_dir} (storage {result.storage})")
    _print_interrupted(result)
    if getattr(args, "test", False):
        _print_test(result.run_dir, args.address, not args.no_progress)
    return 0


def _print_interrupted(result) -> None:
    """Print how to continue a run that Ctrl-C or the time limit stopped before its trials finished."""
    from search.resume import INTERRUPTED_ATTR, RERUN_OF_ATTR

    trials = result.optuna_study.get_trials(deepcopy=False)
    rerun = {trial.user_attrs.get(RERUN_OF_ATTR) for trial in trials}
    interrupted = [trial for trial in trials if trial.user_attrs.get(INTERRUPTED_ATTR) and trial.number not in rerun]
    if not interrupted:
        return
    numbers = ", ".join(str(trial.number) for trial in interrupted)
    print(
        f"{len(interrupted)} trial(s) ({numbers}) stopped before they finished, by Ctrl-C or "
        f"budget.time_limit, and are marked FAIL; `ftsearch resume {result.run_dir}` runs them "
        "again and continues the study",
        file=sys.stderr,
    )


def _command_test(args: argparse.Namespace) -> int:
    _print_test(args.run, args.address, not args.no_progress)
    return 0


def _print_test(run_dir, address, progress: bool) -> None:
    from search.evaluate import TEST_RESULT_FILE, format_test_table, score_test_split

    result = score_test_split(run_dir, address=address, progress=progress)
    print(format_test_table(result))
    print(f"Saved: {Path(run_dir) / TEST_RESULT_FILE}")


def _command_resume(args: argparse.Namespace) -> int:
    from search.storage import RESOLVED_STUDY_FILE

    study_file = Path(args.run) / RESOLVED_STUDY_FILE
    if not study_file.is_file():
        raise FileNotFoundError(
            f"no run found in {str(args.run)!r}: {RESOLVED_STUDY_FILE} is missing; give the run "
            "directory that `ftsearch run` wrote (runs/<study name> by default)"
        )
    args.study, args.run_dir, args.resume = str(study_file), args.run, True
    return _command_run(args)


def _command_validate(args: argparse.Namespace) -> int:
    from search.preflight import prepare, pretrained_source

    study = load_study(args.study)
    prepared = prepare(study)
    print(f"{args.study}: valid")
    print(f"  data: {prepared.dataset.describe()}")
    if study.model.factory is not None:
        print(f"  model: {study.model.factory}, built by the model factory")
    for note in prepared.dataset.notes:
        print(f"  data: {note}")
    for backbone in study.backbones:
        print(f"  model: {backbone}, weights {pretrained_source(study, backbone)}, {study.model.image_size} px")
    searched = [name for name in study.space if study.space[name].searched]
    print(f"  space: {', '.join(searched) or 'nothing searched'}")
    objectives = ", ".join(f"{metric} ({direction})" for metric, direction in study.objective.objectives)
    print(f"  objectives: {objectives}")
    if prepared.slot_choices:
        from search.slots import format_choices

        print("  slot choices, each built on a batch of 2 (forward and backward):")
        print("    " + format_choices(prepared.slot_choices).replace("\n", "\n    "))
    print(
        f"  budget: {study.budget.trials} trials of up to {study.budget.max_epochs} epochs, "
        f"{study.search.concurrency} at once, sampler {study.search.sampler}, "
        f"scheduler {study.search.scheduler}"
    )
    return 0


def _command_best(args: argparse.Namespace) -> int:
    from search.results import best_study, best_summary
    from search.storage import open_run

    if args.export:
        _check_export_target(Path(args.export), args.force)
    study, optuna_study = open_run(args.run)
    summary = best_summary(study, optuna_study)
    if summary is None:
        print(f"no trial of {args.run} has completed yet", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(summary, indent=2, sort_keys=True))
    else:
        _print_best(summary)
        _print_front(study, summary)
    if args.export:
        exported = best_study(study, summary["config"])
        Path(args.export).write_text(exported.to_yaml(), encoding="utf-8")
        print(f"Wrote the best configuration as the study {exported.name!r} to {args.export}", file=sys.stderr)
    return 0


def _check_export_target(target: Path, force: bool) -> None:
    """Raise unless ``target`` can be written: a new file in an existing folder, or ``force``."""
    if target.exists() and not force:
        raise FileExistsError(f"--export: {str(target)!r} already exists; give a new file name, or add --force to replace it")
    if not target.parent.is_dir():
        raise FileNotFoundError(f"--export: folder {str(target.parent)!r} not found; create it or choose another path")


def _command_report(args: argparse.Namespace) -> int:
    from search.report import write_comparison, write_report

    from search.export import ExportError

    if args.compare and len(args.runs) < 2:
        raise StudyError(f"--compare: a comparison needs two or more runs, got {len(args.runs)}; add another run directory")
    for run_dir in args.runs:
        try:
            print(f"Wrote {write_report(run_dir, png=args.png)}")
        except ExportError as error:
            print(f"ftsearch: error: {error}", file=sys.stderr)
            return EXIT_USAGE
    if len(args.runs) > 1:
        print(f"Wrote {write_comparison(args.runs, args.compare or 'comparison.html')}")
    return 0


def _command_status(args: argparse.Namespace) -> int:
    from search.report import format_status
    from search.report_data import status_data
    from search.storage import open_run

    _, optuna_study = open_run(args.run)
    print(format_status(status_data(optuna_study)))
    return 0


def _command_spaces(args: argparse.Namespace) -> int:
    from search.slots import format_catalog

    print(format_catalog())
    return 0


def _print_best(summary: dict | None) -> None:
    if summary is None:
        print("No trial completed.")
        return
    print(f"Best trial {summary['trial']}: {summary['metric']} {summary['value']:.4f} after {summary['epochs']} epochs")
    for name, value in summary["config"].items():
        if value is None:
            continue
        print(f"  {name}: {json.dumps(value) if isinstance(value, (dict, list)) else value}")


def _print_front(study, summary: dict) -> None:
    if "pareto_front" not in summary:
        return
    from search.pareto import format_front

    front = summary["pareto_front"]
    print(f"Pareto front: {len(front)} trials")
    print(format_front(study, front))


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``ftsearch`` command."""
    parser = argparse.ArgumentParser(
        prog="ftsearch",
        description="Search for the best way to fine-tune a pretrained vision model.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages too")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run_parser = commands.add_parser("run", help="run a study file")
    run_parser.add_argument("study", help="study file (YAML)")
    run_parser.add_argument("--run-dir", help="folder for the results (default: runs/<study name>)")
    run_parser.add_argument("--address", help="address of a running Ray cluster (default: start Ray here)")
    run_parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    run_parser.add_argument(
        "--test", action="store_true", help="after the search, score the best trial on the test split (see the test command)"
    )
    run_parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the study already in the run directory's storage up to budget.trials",
    )
    run_parser.set_defaults(handler=_command_run)

    resume_parser = commands.add_parser("resume", help="continue a stopped run with the study it started with")
    resume_parser.add_argument("run", help="run directory, such as runs/digits")
    resume_parser.add_argument("--address", help="address of a running Ray cluster (default: start Ray here)")
    resume_parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    resume_parser.set_defaults(handler=_command_resume)

    validate_parser = commands.add_parser("validate", help="check a study file without running it")
    validate_parser.add_argument("study", help="study file (YAML)")
    validate_parser.set_defaults(handler=_command_validate)

    spaces_parser = commands.add_parser("spaces", help="list the search terms and every slot's choices")
    spaces_parser.set_defaults(handler=_command_spaces)

    best_parser = commands.add_parser("best", help="print the best trial of a run")
    best_parser.add_argument("run", help="run directory, such as runs/digits")
    best_parser.add_argument("--json", action="store_true", help="print JSON")
    best_parser.add_argument("--export", metavar="FILE", help="write a study file that reruns the best configuration")
    best_parser.add_argument("--force", action="store_true", help="with --export, replace FILE if it exists")
    best_parser.set_defaults(handler=_command_best)

    test_parser = commands.add_parser(
        "test", help="score the best trial and the default recipe on the held-out test split"
    )
    test_parser.add_argument("run", help="run directory, such as runs/digits")
    test_parser.add_argument("--address", help="address of a running Ray cluster for training the default recipe")
    test_parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    test_parser.set_defaults(handler=_command_test)

    report_parser = commands.add_parser("report", help="write RUN/report.html; with several runs, also compare them")
    report_parser.add_argument("runs", nargs="+", metavar="run", help="run directory, such as runs/digits")
    report_parser.add_argument(
        "--compare", default=None, metavar="FILE",
        help="where the comparison page of several runs goes (default: comparison.html)",
    )
    report_parser.add_argument(
        "--png", action="store_true", help="also write each figure as RUN/figures/NAME.png (needs kaleido and Chromium)"
    )
    report_parser.set_defaults(handler=_command_report)

    status_parser = commands.add_parser("status", help="print trial counts, the best trial and running trials")
    status_parser.add_argument("run", help="run directory, such as runs/digits")
    status_parser.set_defaults(handler=_command_status)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``ftsearch`` command and return its exit status."""
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    try:
        return args.handler(args)
    except (StudyError, FileNotFoundError, FileExistsError) as error:
        print(f"ftsearch: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("ftsearch: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())

"""The ``visionsweep`` command: a thin layer over ``visionsweep.api`` and ``visionsweep.train``."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

from visionsweep.errors import VisionSweepError
from visionsweep.sweep.commands import add_sweep_commands
from visionsweep.settings import load_settings_file, parse_set_options
from visionsweep.utils import json_ready, write_json

log = logging.getLogger("visionsweep")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        return args.handler(args)
    except (VisionSweepError, NotImplementedError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="visionsweep", description=__doc__.split(":")[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="train one model and write its run folder")
    train.add_argument("--task", required=True, help="image_classification, image_classification_multilabel, ...")
    train.add_argument("--data", required=True, help="training data: a JSONL file or an MLTable folder")
    train.add_argument("--validation-data", help="validation data; without it validation_size is held out")
    _settings_options(train)
    train.add_argument("--output", help="run folder to write (default: runs/TASK-MODEL-TIME)")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.set_defaults(handler=_train)

    predict = commands.add_parser("predict", help="predict with a trained model; writes JSON Lines")
    predict.add_argument("model", help="a run folder, a model folder, a checkpoint file or a sweep's run folder "
                                       "(its best trial's model)")
    predict.add_argument("input", help="an image, a folder of images, a JSONL file or an MLTable folder")
    predict.add_argument("--output", default="predictions.jsonl", help="predictions file (default: %(default)s)")
    _settings_options(predict)
    predict.set_defaults(handler=_predict)

    evaluate = commands.add_parser("evaluate", help="metrics of a trained model, or of a predictions file")
    evaluate.add_argument("model", nargs="?", help="a run folder, model folder, checkpoint or sweep run folder (its "
                                                   "best trial's model); omit with --predictions")
    evaluate.add_argument("--data", required=True, help="labelled data: a JSONL file or an MLTable folder")
    evaluate.add_argument("--predictions", help="a predictions file in the scoring format, scored without a model")
    evaluate.add_argument("--task", help="the task of --predictions")
    evaluate.add_argument("--output", help="also write the metrics to this JSON file")
    _settings_options(evaluate)
    evaluate.set_defaults(handler=_evaluate)

    validate = commands.add_parser("validate-data", help="check data as train would and print the data report")
    validate.add_argument("--task", required=True)
    validate.add_argument("--data", required=True)
    validate.add_argument("--validation-data")
    validate.add_argument("--output", help="also write the report to this JSON file")
    _settings_options(validate)
    validate.set_defaults(handler=_validate)

    convert = commands.add_parser("convert", help="import another annotation layout into Azure JSONL")
    convert.add_argument("--from", dest="source_format", required=True, help="folder, csv, ...")
    convert.add_argument("source", help="the folder or file to import")
    convert.add_argument("--output", required=True, help="JSONL file to write")
    convert.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                         help="an importer option, e.g. multilabel=true or image_root=DIR (repeatable)")
    convert.set_defaults(handler=_convert)

    add_sweep_commands(commands)

    models = commands.add_parser("models", help="list the model names of a task (or of every task)")
    models.add_argument("--task")
    models.set_defaults(handler=_models)

    example = commands.add_parser("example", help="write a small bundled dataset and train on it end to end")
    example.add_argument("name", choices=["digits"], help="digits: scikit-learn's handwritten digits")
    example.add_argument("--output", default="runs/digits-example", help="folder for data and run")
    example.add_argument("--epochs", type=int, default=4)
    example.set_defaults(handler=_example)
    return parser


def _settings_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="a YAML or JSON file of settings")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a setting, e.g. --set learning_rate=0.01 (repeatable; wins over --config)")


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    values = load_settings_file(args.config) if args.config else {}
    values.update(parse_set_options(args.set))
    return values


def _train(args: argparse.Namespace) -> int:
    from visionsweep.training import train

    result = train(args.task, args.data, args.validation_data, settings=_settings(args), output=args.output,
                   progress=not args.no_progress)
    print(json.dumps(json_ready({
        "run_dir": result.run_dir, "model_dir": result.model_dir, "status": result.status,
        "primary_metric": result.primary_metric, "best_score": result.best_score, "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run}), indent=2))
    return 0


def _predict(args: argparse.Namespace) -> int:
    from visionsweep import api

    result = api.predict(args.model, args.input, output=args.output, settings=_settings(args))
    log.info("%s", result.report.summary())
    log.info("wrote %d predictions to %s", result.images, result.output)
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from visionsweep import api

    metrics, report = api.evaluate(args.model, data=args.data, task=args.task, predictions=args.predictions,
                                   settings=_settings(args))
    log.info("%s", report.summary())
    if args.output:
        write_json(Path(args.output), {"metrics": metrics, "data_report": report.to_dict()})
    print(json.dumps(json_ready(metrics), indent=2))
    return 0


def _validate(args: argparse.Namespace) -> int:
    from visionsweep import api

    data = api.validate_data(args.task, args.data, args.validation_data, settings=_settings(args))
    for report in data.reports:
        print(report.summary(max_lines=50))
    source = "held out of the training data" if data.split_from_training else "given"
    print(f"training images: {len(data.train)}, validation images: {len(data.validation)} ({source}), "
          f"classes: {len(data.classes)}")
    if args.output:
        write_json(Path(args.output), {"sources": [r.to_dict() for r in data.reports],
                                       "training_images": len(data.train), "validation_images": len(data.validation),
                                       "classes": data.classes})
    return 0


def _convert(args: argparse.Namespace) -> int:
    from visionsweep import api

    options = parse_set_options(args.option)
    result = api.convert(args.source_format, args.source, args.output, **options)
    print(result.report.summary(max_lines=50))
    print(f"wrote {len(result.records)} {result.task.value} records to {args.output}")
    return 0


def _models(args: argparse.Namespace) -> int:
    from visionsweep.models import list_models
    from visionsweep.tasks import Task, parse_task

    tasks = [parse_task(args.task)] if args.task else list(Task)
    for task in tasks:
        available = set(list_models(task))
        names = [n + ("" if n in available else " (not available yet)") for n in task.model_names]
        print(f"{task.value} (default {task.default_model}): {', '.join(names)}")
    return 0


def _example(args: argparse.Namespace) -> int:
    from visionsweep.examples import run_digits_example

    summary = run_digits_example(Path(args.output), epochs=args.epochs)
    print(json.dumps(json_ready(summary), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

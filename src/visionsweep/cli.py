"""The ``visionsweep`` command: a thin layer over ``visionsweep.api`` and ``visionsweep.train``."""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Sequence

from visionsweep.errors import VisionSweepError
from visionsweep.sweep.commands import add_sweep_commands
from visionsweep.settings import load_settings_file, override_settings, parse_set_options
from visionsweep.utils import json_ready, write_json

log = logging.getLogger("visionsweep")

DESCRIPTION = ("Local-first AutoML for computer vision, compatible with Azure AutoML for Images: train, sweep, "
               "predict and evaluate image classification, object detection and instance segmentation models.")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv
    if getattr(args, "check_arguments", None):
        args.check_arguments(args)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    # Images above max_image_pixels are skipped and reported; PIL's warning about them would only repeat it.
    warnings.filterwarnings("ignore", message=r"Image size \(\d+ pixels\) exceeds limit")
    try:
        return args.handler(args)
    except VisionSweepError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        if error.filename is None:  # not about a path the user gave: a bug, keep its traceback
            raise
        print(f"error: {error.filename}: {error.strerror or error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    from visionsweep.data import importer_names
    from visionsweep.serving import config as serve_config
    from visionsweep.tasks import Task

    tasks = ", ".join(task.value for task in Task)
    parser = argparse.ArgumentParser(
        prog="visionsweep", description=DESCRIPTION,
        epilog="'visionsweep COMMAND --help' describes the options of a command.")
    parser.add_argument("--version", action="version", version=f"visionsweep {_version()}",
                        help="print the version and exit")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", help="one of:")

    train = commands.add_parser("train", help="train one model and write its run folder")
    train.add_argument("--task", help=f"the task, one of: {tasks} (required unless --resume)")
    train.add_argument("--data", help="training data: a JSONL file or an MLTable folder (required unless --resume)")
    train.add_argument("--validation-data", help="validation data; without it validation_size is held out")
    _settings_options(train)
    train.add_argument("--output", help="run folder to write (default: runs/TASK-MODEL-TIME)")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.add_argument("--overwrite", action="store_true", help="replace the run already in --output")
    train.add_argument("--resume", metavar="RUN_DIR",
                       help="continue the interrupted run in RUN_DIR from its checkpoints/last.pt, with its own data "
                            "and settings (--set may change training_batch_size, grad_accumulation_step, num_workers "
                            "and a larger number_of_epochs)")
    launch = train.add_argument_group("distributed training (docs/distributed.md)")
    launch.add_argument("--nproc-per-node", type=int, metavar="N",
                        help="processes on this machine, one per GPU (default: every GPU when there are several and "
                             "the setting distributed is true, else 1; on the CPU N processes share the cores)")
    launch.add_argument("--nnodes", type=int, default=1, metavar="M", help="machines in the run (default: 1)")
    launch.add_argument("--node-rank", type=int, default=0, metavar="R", help="this machine's number, 0 to M-1")
    launch.add_argument("--master-addr", metavar="ADDRESS", help="address of the machine of node rank 0")
    launch.add_argument("--master-port", type=int, metavar="PORT",
                        help="its rendezvous port (default: a free port with one machine, 29500 with several)")
    train.set_defaults(handler=_train, check_arguments=lambda args: _check_train_arguments(train, args))

    predict = commands.add_parser(
        "predict", help="predict with a trained model; writes JSON Lines",
        epilog="A classifier also explains each prediction with --set model_explainability=true (options: "
               "xai_algorithm, n_steps, attributions ...; docs/explainability.md).")
    predict.add_argument("model", help="a run folder, a model folder, a checkpoint file, a sweep's run folder "
                                       "(its best trial's model) or an exported .onnx file")
    predict.add_argument("input", help="an image, a folder of images, a JSONL file or an MLTable folder")
    predict.add_argument("--output", default="predictions.jsonl", help="predictions file (default: %(default)s)")
    predict.add_argument("--labeled-dataset", metavar="PATH",
                         help="also write the labelled-dataset file of Azure AutoML (its labeled_dataset.json): "
                              "JSON Lines, one line per image of --output in the same order, with image_url "
                              "(AmlDatastore://<filename>), label_confidence (the score of each box; for "
                              "classification the probability of each class) and label (each box's corners, "
                              "class and, for segmentation, polygon; for classification the class list)")
    _runtime_option(predict)
    _settings_options(predict)
    predict.set_defaults(handler=_predict)

    evaluate = commands.add_parser("evaluate", help="metrics of a trained model, or of a predictions file")
    evaluate.add_argument("model", nargs="?", help="a run folder, model folder, checkpoint or sweep run folder (its "
                                                   "best trial's model); omit with --predictions")
    evaluate.add_argument("--data", required=True, help="labelled data: a JSONL file or an MLTable folder")
    evaluate.add_argument("--predictions", help="a predictions file in the scoring format, scored without a model")
    evaluate.add_argument("--task", help=f"the task of --predictions, one of: {tasks}")
    evaluate.add_argument("--output", help="also write the metrics and the data reports to this JSON file")
    _runtime_option(evaluate)
    _settings_options(evaluate)
    evaluate.set_defaults(handler=_evaluate)

    validate = commands.add_parser("validate-data", help="check data as train would and print the data report")
    validate.add_argument("--task", required=True, help=f"the task, one of: {tasks}")
    validate.add_argument("--data", required=True, help="training data: a JSONL file or an MLTable folder")
    validate.add_argument("--validation-data", help="validation data; without it validation_size is held out")
    validate.add_argument("--output", help="also write the report to this JSON file")
    validate.add_argument("--headers-only", action="store_true",
                          help="check image headers and file structure only, as train does before it starts, "
                               "instead of decoding every image (faster; a damaged image such as a JPEG cut short "
                               "is then found only by training)")
    _settings_options(validate)
    validate.set_defaults(handler=_validate)

    convert = commands.add_parser("convert", help="import another annotation layout into Azure JSONL")
    convert.add_argument("--from", dest="source_format", required=True, choices=importer_names(), metavar="FORMAT",
                         help=f"the layout of SOURCE, one of: {', '.join(importer_names())} (docs/data.md)")
    convert.add_argument("source", metavar="SOURCE", help="the folder or file to import")
    convert.add_argument("--output", required=True, help="JSONL file to write")
    convert.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                         help="an importer option, e.g. multilabel=true or image_root=DIR (repeatable)")
    convert.set_defaults(handler=_convert)

    export = commands.add_parser("export", help="export a trained model as ONNX (docs/deployment.md)")
    export.add_argument("model", help="a run folder, model folder, checkpoint or sweep run folder (its best trial's)")
    export.add_argument("--format", default="onnx",
                        help="onnx (default), or mlflow: an MLflow pyfunc model folder (needs the mlflow extra)")
    export.add_argument("--output", help="file (onnx) or folder (mlflow) to write (default: model.onnx or mlflow-model/ "
                                         "in the model folder)")
    export.add_argument("--batch", default="dynamic", metavar="N|dynamic",
                        help="the batch size the file takes (default: dynamic, any)")
    export.add_argument("--opset", type=int, help="the ONNX opset to write (default: 17)")
    export.add_argument("--nms", action="store_true",
                        help="YOLOv5: put the score filter and NMS in the graph (outputs boxes, labels, scores, "
                             "batch_index instead of the raw 'output')")
    _settings_options(export)
    export.set_defaults(handler=_export)

    serve = commands.add_parser("serve", help="serve a trained model over HTTP: POST /score in the Azure online "
                                              "endpoint formats (docs/deployment.md)")
    serve.add_argument("model", help="a run folder, model folder, checkpoint file, sweep's run folder (its best "
                                     "trial's model) or exported .onnx file")
    serve.add_argument("--host", default=serve_config.DEFAULT_HOST,
                       help="address to listen on (default: %(default)s, this machine only; 0.0.0.0 for every "
                            "network interface)")
    serve.add_argument("--port", type=int, default=serve_config.DEFAULT_PORT, help="TCP port (default: %(default)s)")
    _runtime_option(serve)
    _settings_options(serve)
    serve.add_argument("--workers", type=int, default=1,
                       help="worker processes, each with the model loaded (default: %(default)s)")
    serve.add_argument("--max-batch-size", type=int, default=serve_config.DEFAULT_MAX_BATCH_SIZE,
                       help="most images scored in one forward, from concurrent requests (default: %(default)s; "
                            "1 scores one request at a time)")
    serve.add_argument("--max-wait-ms", type=float, default=serve_config.DEFAULT_MAX_WAIT_MS,
                       help="how long a request may wait for others to join its forward (default: %(default)s)")
    serve.add_argument("--max-body-mb", type=float, default=serve_config.DEFAULT_MAX_BODY_MB,
                       help="largest request body in MiB; larger ones are refused with 413 (default: %(default)s)")
    serve.add_argument("--api-key-env", metavar="VARIABLE",
                       help="the environment variable holding the API key that requests must send as "
                            "'Authorization: Bearer KEY' (never the key itself; default: no key)")
    serve.add_argument("--log-level", choices=serve_config.LOG_LEVELS, default="info",
                       help="server log level (default: %(default)s; warning leaves out the line per request)")
    serve.set_defaults(handler=_serve)

    add_sweep_commands(commands)

    models = commands.add_parser("models", help="list the model names of a task (or of every task)")
    models.add_argument("--task", help=f"only this task, one of: {tasks}")
    models.add_argument("--search", metavar="WORD", help="list timm's model names containing WORD instead (any of "
                                                         "them is a classification model_name: docs/models.md)")
    models.set_defaults(handler=_models)

    weights = commands.add_parser("weights", help="the pretrained files models need: list, download, import "
                                                  "(machines without network: docs/models.md)")
    weight_commands = weights.add_subparsers(dest="weights_command", required=True, metavar="COMMAND",
                                             help="list, download or import")
    listing = weight_commands.add_parser("list", help="which files each model needs, where they are cached, which "
                                                      "are present")
    listing.add_argument("models", nargs="*", metavar="MODEL", help="model names (default: every catalog model)")
    listing.set_defaults(handler=_weights_list)
    download = weight_commands.add_parser("download", help="download the files of these models (a connected machine)")
    download.add_argument("models", nargs="+", metavar="MODEL", help="model names")
    download.add_argument("--into", metavar="DIR", help="into this folder, with a manifest of hashes for 'weights "
                                                        "import' (default: into the caches)")
    download.set_defaults(handler=_weights_download)
    importing = weight_commands.add_parser("import", help="put downloaded files into the caches, checked by hash")
    importing.add_argument("paths", nargs="+", metavar="PATH", help="a folder 'weights download --into' wrote, or "
                                                                    "weights files")
    importing.add_argument("--model", help="the model the files belong to (needed for generic names such as "
                                           "model.safetensors)")
    importing.add_argument("--sha256", help="the SHA-256 the single file must have (as its source publishes it)")
    importing.set_defaults(handler=_weights_import)

    report = commands.add_parser("report", help="write report.html of a run folder or a sweep folder again "
                                                "(docs/reports.md)")
    report.add_argument("folder", help="a run folder (train --output) or a sweep folder (run --output)")
    report.add_argument("--gallery-size", type=int, default=24,
                        help="run report: how many validation images to show, worst first (default: %(default)s)")
    report.add_argument("--score-threshold", type=float, default=0.5,
                        help="run report of a detection model: the predictions drawn and counted in the gallery, "
                             "and the confusion matrix shown (default: %(default)s)")
    report.set_defaults(handler=_report)

    example = commands.add_parser("example", help="write a small bundled dataset and train on it end to end")
    example.add_argument("name", choices=["digits"], help="digits: scikit-learn's handwritten digits")
    example.add_argument("--output", default="runs/digits-example",
                         help="folder for the data and the run (default: %(default)s)")
    example.add_argument("--epochs", type=int, default=4, help="training epochs (default: %(default)s)")
    example.add_argument("--overwrite", action="store_true", help="replace the example run already in --output")
    example.set_defaults(handler=_example)
    return parser


def _version() -> str:
    """The installed distribution's version, else (a source tree on the path) the package's own."""
    try:
        return importlib.metadata.version("visionsweep")
    except importlib.metadata.PackageNotFoundError:
        from visionsweep import __version__

        return __version__


def _settings_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="a YAML or JSON file of settings")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a setting, e.g. --set learning_rate=0.01 (repeatable; wins over --config)")


def _runtime_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runtime", choices=["torch", "onnxruntime"],
                        help="torch (default) or onnxruntime: run the model folder's model.onnx (the default for an "
                             ".onnx model file)")


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    values = load_settings_file(args.config) if args.config else {}
    return override_settings(values, parse_set_options(args.set))


def _check_train_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """--task and --data are required, except with --resume, which takes the run's own (usage errors, exit 2)."""
    if args.resume is None:
        missing = [option for option, value in (("--task", args.task), ("--data", args.data)) if value is None]
        if missing:
            parser.error(f"the following arguments are required: {', '.join(missing)} (or --resume RUN_DIR)")
        return
    given = [option for option, value in (("--task", args.task), ("--data", args.data),
                                          ("--validation-data", args.validation_data), ("--output", args.output))
             if value is not None] + (["--overwrite"] if args.overwrite else [])
    if given:
        parser.error(f"--resume continues the run in RUN_DIR with its own task, data and folder; leave out "
                     f"{', '.join(given)}")


def _train(args: argparse.Namespace) -> int:
    from visionsweep.distributed import launched_world_size
    from visionsweep.training import train

    settings = _settings(args)
    if launched_world_size() == 1:  # not yet one of the launcher's processes: maybe start them
        launch = _launch(args, settings)
        if launch.world_size > 1:
            from visionsweep.training.launcher import launch_processes

            launch_processes(launch, ["--module", "visionsweep", *_without_launch_options(args.argv)])
            return 0
    resume = args.resume is not None
    result = train(args.task, args.data, args.validation_data, settings=settings,
                   output=args.resume if resume else args.output, progress=not args.no_progress,
                   overwrite=args.overwrite, resume=resume)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # rank 0 prints the summary
    print(json.dumps(json_ready({
        "run_dir": result.run_dir, "model_dir": result.model_dir, "status": result.status,
        "primary_metric": result.primary_metric, "best_score": result.best_score, "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run}), indent=2))
    return 0


_LAUNCH_OPTIONS = ("--nproc-per-node", "--nnodes", "--node-rank", "--master-addr", "--master-port")


def _launch(args: argparse.Namespace, settings: dict[str, Any]) -> Any:
    from visionsweep.devices import visible_gpu_count
    from visionsweep.settings import resolve_settings
    from visionsweep.training.launcher import Launch, processes_per_node

    if args.resume is not None:  # the run's own settings, with the changes allowed on resume
        from visionsweep.training.resume import settings_to_resume

        _, resolved = settings_to_resume(Path(args.resume), settings)
    else:
        resolved = resolve_settings(args.task, settings)
    processes = processes_per_node(args.nproc_per_node, distributed=resolved.distributed, device=resolved.device,
                                   gpus=visible_gpu_count())
    return Launch(processes, args.nnodes, args.node_rank, args.master_addr, args.master_port)


def _without_launch_options(argv: Sequence[str]) -> list[str]:
    """``argv`` without the launcher's options (the processes it starts must not start processes again)."""
    kept: list[str] = []
    skip = False
    for token in argv:
        if skip:
            skip = False
        elif token in _LAUNCH_OPTIONS:
            skip = True
        elif not token.startswith(tuple(option + "=" for option in _LAUNCH_OPTIONS)):
            kept.append(token)
    return kept


def _predict(args: argparse.Namespace) -> int:
    from visionsweep import api

    result = api.predict(args.model, args.input, output=args.output, settings=_settings(args), runtime=args.runtime,
                         labeled_dataset=args.labeled_dataset)
    log.info("%s", result.report.summary())
    log.info("wrote %d predictions to %s", result.images, result.output)
    if result.labeled_dataset is not None:
        log.info("wrote the labelled dataset of those predictions to %s", result.labeled_dataset)
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from visionsweep import api

    result = api.evaluate(args.model, data=args.data, task=args.task, predictions=args.predictions,
                          settings=_settings(args), runtime=args.runtime)
    for report in result.reports:
        log.info("%s", report.summary())
    if args.output:
        written = {"metrics": result.metrics, "data_report": result.report.to_dict()}
        if result.predictions_report is not None:
            written["predictions_report"] = result.predictions_report.to_dict()
        write_json(Path(args.output), written)
    print(json.dumps(json_ready(result.metrics), indent=2))
    return 0


def _export(args: argparse.Namespace) -> int:
    from visionsweep import api
    from visionsweep.errors import SettingsError

    if args.batch == "dynamic":
        batch = None
    elif args.batch.isdigit() and int(args.batch) > 0:
        batch = int(args.batch)
    else:
        raise SettingsError([f"--batch: got {args.batch!r}; use a positive number of images or 'dynamic'"],
                            context="export")
    result = api.export(args.model, args.output, format=args.format, batch=batch, opset=args.opset, nms=args.nms,
                        settings=_settings(args))
    log.info("wrote %s (%.1f MB) in %.1f s", result.path, result.size_bytes / 1e6, result.seconds)
    metadata = result.metadata
    summary = {"path": result.path, "format": args.format, "task": metadata.task, "model_name": metadata.model_name,
               "input": metadata.input_name}
    if args.format == "onnx":
        summary["input_shape"] = metadata.input_shape
    print(json.dumps(json_ready({**summary, "outputs": list(metadata.outputs)}), indent=2))
    return 0


def _serve(args: argparse.Namespace) -> int:
    from visionsweep.serving.server import serve

    serve(args.model, host=args.host, port=args.port, runtime=args.runtime, settings=_settings(args),
          workers=args.workers, max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms,
          max_body_mb=args.max_body_mb, api_key_env=args.api_key_env, log_level=args.log_level)
    return 0


def _validate(args: argparse.Namespace) -> int:
    from visionsweep import api

    data = api.validate_data(args.task, args.data, args.validation_data, settings=_settings(args),
                             decode_images=not args.headers_only)
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

    options = parse_set_options(args.option, "--option")
    result = api.convert(args.source_format, args.source, args.output, **options)
    print(result.report.summary(max_lines=50))
    print(f"wrote {len(result.records)} {result.task.value} records to {args.output}")
    return 0


def _models(args: argparse.Namespace) -> int:
    from visionsweep.model_catalog import OPEN_MODELS_HINT, model_names
    from visionsweep.tasks import Task, parse_task

    if args.search is not None:
        from visionsweep.models.open_models import search_timm_models

        found = search_timm_models(args.search)
        print("\n".join(found) if found else f"no timm model name contains {args.search!r}")
        return 0
    tasks = [parse_task(args.task)] if args.task else list(Task)
    for task in tasks:
        print(f"{task.value} (default {task.default_model}): {', '.join(model_names(task))}")
    if any(task.is_classification for task in tasks):
        print(f"classification also takes {OPEN_MODELS_HINT}")
    return 0


def _weights_list(args: argparse.Namespace) -> int:
    from visionsweep.models.weight_store import check_model_name, list_weights

    for name in args.models:
        check_model_name(name)
    for row in list_weights(args.models or None):
        state = "present" if row["present"] else "missing"
        print(f"{row['model']}\t{row['role']}\t{state}\t{row['cache_path']}\t{row['origin']}")
    return 0


def _weights_download(args: argparse.Namespace) -> int:
    from visionsweep.models.weight_store import check_model_name, download_weights

    for name in args.models:
        check_model_name(name)
    for path in download_weights(args.models, Path(args.into) if args.into else None):
        print(path)
    return 0


def _weights_import(args: argparse.Namespace) -> int:
    from visionsweep.models.weight_store import check_model_name, import_weights

    if args.model is not None:
        check_model_name(args.model)
    for path in import_weights(args.paths, model=args.model, sha256=args.sha256):
        print(path)
    return 0


def _report(args: argparse.Namespace) -> int:
    from visionsweep.api import report

    print(report(args.folder, gallery_size=args.gallery_size, score_threshold=args.score_threshold))
    return 0


def _example(args: argparse.Namespace) -> int:
    from visionsweep.examples import run_digits_example

    summary = run_digits_example(Path(args.output), epochs=args.epochs, overwrite=args.overwrite)
    print(json.dumps(json_ready(summary), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Programs the distributed tests run, each as the processes of a run (under ``torch.distributed.run``) or as
one process: ``python tests/distributed_helpers.py train|evaluate|die SPEC.json``.

``train`` trains with ``visionsweep.train`` after two changes to the built model that take randomness and
per-process statistics out of the comparison of 2 processes with 1 (see tests/test_distributed.py):
``freeze_batch_norm`` keeps batch-norm statistics fixed (on the CPU each process normalises its own
share, and SyncBatchNorm needs CUDA), and ``rcnn_every_sample`` makes the R-CNN samplers take every
anchor and proposal instead of a random subset. ``evaluate`` validates the same model on the whole set in
one process and on shares over the processes, and writes both metrics. ``die`` trains, and rank 1 exits
at its first step.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from torch import nn


def _tweak(model: nn.Module, spec: dict) -> nn.Module:
    if spec.get("freeze_batch_norm"):
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                for parameter in module.parameters(recurse=False):
                    parameter.requires_grad_(False)  # train_mode keeps such layers in eval mode
    if spec.get("rcnn_every_sample"):
        model.rpn._post_nms_top_n = {"training": 16, "testing": 16}  # every image keeps 16 proposals
        model.rpn.fg_bg_sampler.batch_size_per_image = 10**6
        model.roi_heads.fg_bg_sampler.batch_size_per_image = 10**6
    if spec.get("initial_weights") and int(os.environ.get("RANK", "0")) == 0:
        torch.save(model.state_dict(), spec["initial_weights"])
    return model


def train(spec: dict) -> None:
    """Train ``spec`` (one run), or each of ``spec["runs"]`` in turn in the same processes (which join their
    process group once: the runs leave it as they found it)."""
    import visionsweep
    from visionsweep.distributed import ranks_from_environment, start_process_group
    from visionsweep.training import run

    build, current = run.build_model, {}
    run.build_model = lambda *args, **kwargs: _tweak(build(*args, **kwargs), current)
    if spec.get("die_on_rank") is not None and int(os.environ.get("RANK", "0")) == spec["die_on_rank"]:
        from visionsweep.families.classification.family import ClassificationFamily

        def die(self, model, batch):
            sys.stdout.flush()
            os._exit(3)

        ClassificationFamily.train_step = die
    start_process_group(ranks_from_environment("cpu"))
    for one in spec.get("runs", [spec]):
        current.clear()
        current.update(one)
        visionsweep.train(one["task"], one["data"], one.get("validation_data"), settings=one["settings"],
                          output=one["output"], progress=False, overwrite=True)


def evaluate(spec: dict) -> None:
    """Metrics of one model on ``spec["data"]``: every rank's share gathered, and rank 0 alone on all."""
    from visionsweep.data.jsonl import read_labeled_data
    from visionsweep.distributed import SINGLE_PROCESS, ranks_from_environment, start_process_group
    from visionsweep.families.selection import family_for
    from visionsweep.models import build_model, get_model_spec
    from visionsweep.settings import resolve_settings

    ranks = ranks_from_environment("cpu")
    start_process_group(ranks)
    results = {}
    for name, case in spec["cases"].items():
        settings = resolve_settings(case["task"], case["settings"])
        labelled = read_labeled_data(case["data"], settings.task)
        records, classes = labelled.records, labelled.classes
        torch.manual_seed(0)
        model = build_model(get_model_spec(settings.model_name), len(classes), settings.model_dump(),
                            pretrained=False, pretrained_weights=None, layers_to_freeze=None).eval()
        ignore = lambda failures, stage: None  # noqa: E731 - the test data has no unreadable image
        shared = family_for(settings, classes, torch.device("cpu"), ignore, ranks)
        shares = shared.training_loaders(records, records).validation
        with torch.no_grad():
            gathered = shared.evaluate(model, shares)
            alone = family_for(settings, classes, torch.device("cpu"), ignore, SINGLE_PROCESS)
            single = alone.evaluate(model, alone.training_loaders(records, records).validation)
        results[name] = {"gathered": gathered, "single": single, "share": len(shares.sampler)}
    shares_by_rank = ranks.gather({name: result["share"] for name, result in results.items()})
    if ranks.is_main:
        from visionsweep.utils import json_ready

        Path(spec["output"]).write_text(json.dumps(json_ready({"results": results, "shares": shares_by_rank})))
    torch.distributed.destroy_process_group()


DIES = 0.0031  # a trial with this learning rate loses its rank 1 at the start


def train_or_die(task, data, validation_data=None, *, settings, output, epoch_callback=None, progress=True,
                 overwrite=False):
    """``visionsweep.train`` as a sweep's trainer, except that rank 1 of a trial with learning rate ``DIES``
    exits at once (the launcher must stop rank 0, which waits for it, and the trial must fail)."""
    import visionsweep

    if settings.get("learning_rate") == DIES and os.environ.get("RANK") == "1":
        os._exit(3)
    return visionsweep.train(task, data, validation_data, settings=settings, output=output,
                             epoch_callback=epoch_callback, progress=progress, overwrite=overwrite)


def train_in_little_memory(task, data, validation_data=None, *, settings, output, epoch_callback=None,
                           progress=True, overwrite=False, resume=False):
    """``visionsweep.train`` on a device where a training batch of more than 2 images runs out of memory."""
    import visionsweep
    from visionsweep.families.classification.family import ClassificationFamily

    step = ClassificationFamily.train_step

    def limited(self, model, batch):
        if len(batch.indices) > 2:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {len(batch.indices)} images")
        return step(self, model, batch)

    ClassificationFamily.train_step = limited
    options = {"resume": True} if resume else {}
    return visionsweep.train(task, data, validation_data, settings=settings, output=output,
                             epoch_callback=epoch_callback, progress=progress, overwrite=overwrite, **options)


SLOW = "VS_TEST_SLOW_EPOCHS"  # seconds to wait after each epoch, so that a test can kill the sweep mid-trial


def train_slowly(task, data, validation_data=None, *, settings, output, epoch_callback=None, progress=True,
                 overwrite=False, resume=False):
    """``visionsweep.train`` as a sweep's trainer, waiting ``$VS_TEST_SLOW_EPOCHS`` seconds after each epoch."""
    import time

    import visionsweep

    def callback(report):
        stop = epoch_callback(report) if epoch_callback else False
        time.sleep(float(os.environ.get(SLOW, "0")))
        return stop

    return visionsweep.train(task, data, validation_data, settings=settings, output=output, epoch_callback=callback,
                             progress=progress, overwrite=overwrite, resume=resume)


if __name__ == "__main__":
    command, spec_file = sys.argv[1], sys.argv[2]
    {"train": train, "die": train, "evaluate": evaluate}[command](json.loads(Path(spec_file).read_text()))

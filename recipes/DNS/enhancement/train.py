#!/usr/bin/env python3
"""Recipe for training FRCRN speech enhancement on the DNS-Challenge (interspeech2020) data.

Noisy/clean pairs are mixed on the fly from the DNS clean speech, noise and (optionally) room
impulse responses; validation uses a fixed, seeded set of mixtures; at the end the best
checkpoint enhances the synthetic test set and is scored with PESQ-WB/NB, STOI and SI-SNR
(``speechbrain_ext.evaluation``).

To run it:

    python train.py hparams/frcrn.yaml --data_folder /path/to/DNS-Challenge
    python train.py hparams/frcrn_small.yaml --data_folder ...          # quick experiments
    torchrun --nproc_per_node=4 train.py hparams/frcrn.yaml --data_folder ...
    python train.py hparams/frcrn.yaml --data_folder ... --pretrained_path pytorch_model.bin

``--pretrained_path`` starts from official FRCRN weights (ModelScope ``pytorch_model.bin`` or a
ClearerVoice-Studio checkpoint) and trains with ``finetune_lr`` instead of ``lr``; the
model's validation loss before any update is logged as epoch 0. Rerunning the same command
after an interruption resumes from the last checkpoint (also mid-epoch: ``ckpt_interval_minutes``).
On machines without a GPU, multi-process runs use the gloo backend.

Authors
 * speechbrain-ext contributors
"""

import csv
import dataclasses
import functools
import glob
import json
import logging
import math
import os
import shutil
import sys
import time

import soundfile as sf
import speechbrain as sb
import torch
import torch.nn.functional as F
from hyperpyyaml import load_hyperpyyaml
from speechbrain.nnet.schedulers import update_learning_rate
from speechbrain.utils.checkpoints import mark_as_loader, mark_as_saver, register_checkpoint_hooks
from speechbrain.utils.distributed import ddp_broadcast, get_rank, if_main_process, main_process_only, run_on_main
from torch.nn.parallel import DistributedDataParallel

from speechbrain_ext.convert import frcrn_from_official
from speechbrain_ext.evaluation import EvaluationItem, evaluate_items, format_summary, plot_spectrograms, write_csv
from speechbrain_ext.lobes.models.frcrn import frcrn_loss, si_snr

from dynamic_mixing import TrainingMixer, validation_mixture, whole_frames_length
from prepare_dns import DNSLayoutError, prepare_dns

logger = logging.getLogger(__name__)

# Constructor arguments of FRCRN that the model definition (hparams/frcrn.yaml) sets.
FRCRN_DEFINITION_KEYS = ("win_len", "win_inc", "fft_len", "win_type", "channels", "fsmn_hidden", "fsmn_order",
                         "se_reduction")
# Name of the recoverable whose file marks a checkpoint as completely written.
COMPLETE_MARKER = "complete"


@register_checkpoint_hooks
class CompletenessMarker:
    """Writes ``complete.ckpt`` into each checkpoint, after every other file of it.

    SpeechBrain writes a checkpoint file by file; a run killed meanwhile leaves a checkpoint
    that cannot be loaded, and the next run would pick it as the latest. Registered last, this
    marker exists only in complete checkpoints (see :func:`discard_incomplete_checkpoints`).
    """

    @mark_as_saver
    def save(self, path):
        if if_main_process():
            with open(path, "w", encoding="utf-8") as stream:
                stream.write("complete\n")

    @mark_as_loader
    def load(self, path, end_of_epoch):
        del path, end_of_epoch  # nothing to restore


def discard_incomplete_checkpoints(checkpoints_dir):
    """Delete the checkpoints an interrupted save left without their completeness marker."""
    for path in sorted(glob.glob(os.path.join(checkpoints_dir, "CKPT+*"))):
        if os.path.isdir(path) and not os.path.isfile(os.path.join(path, f"{COMPLETE_MARKER}.ckpt")):
            logger.warning("Deleting %s: the run was interrupted while saving it", path)
            shutil.rmtree(path)


class FRCRNStages(torch.nn.Module):
    """FRCRN whose ``forward`` returns both stages (:meth:`FRCRN.forward_stages`).

    The loss needs the final stage's mask, which ``FRCRN.forward`` does not return, and DDP
    synchronises gradients only for what runs through the wrapped module's ``forward``.
    """

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, noisy):
        return self.model.forward_stages(noisy)


class EnhancementBrain(sb.Brain):
    """Trains FRCRN with its official loss (``frcrn_loss``); logs SI-SNR on validation."""

    def compute_forward(self, batch, stage):
        batch = batch.to(self.device)
        return self.modules.enhancer(batch.noisy.data)

    def compute_objectives(self, stages, batch, stage):
        noisy, clean = batch.noisy.data, batch.clean.data
        losses = frcrn_loss(self.hparams.model, stages, noisy, clean)
        if stage != sb.Stage.TRAIN:
            enhanced = stages[-1].wav.float()
            self.si_snrs.extend(si_snr(enhanced, clean).tolist())
            self.noisy_si_snrs.extend(si_snr(noisy, clean).tolist())
        return losses["loss"]

    def on_stage_start(self, stage, epoch=None):
        self.si_snrs, self.noisy_si_snrs = [], []
        if stage == sb.Stage.TRAIN:
            # Non-zero when an intra-epoch checkpoint was recovered: the epoch continues there.
            self.resumed_at_step = self.step

    def on_stage_end(self, stage, stage_loss, epoch=None):
        stats = {"loss": stage_loss}
        if self.si_snrs:
            stats["si_snr"] = sum(self.si_snrs) / len(self.si_snrs)
            stats["si_snr_improvement"] = stats["si_snr"] - sum(self.noisy_si_snrs) / len(self.noisy_si_snrs)
        if stage == sb.Stage.TRAIN:
            self.train_stats = stats
            self.train_steps = self.step
            return
        if stage != sb.Stage.VALID:
            return
        if epoch == 0:  # the initial (pretrained) model, before any update
            self.hparams.train_logger.log_stats(stats_meta={"epoch": 0, "model": "initial"}, valid_stats=stats)
            self.record_history({"epoch": 0, "valid": stats})
            return
        current_lr, next_lr = self.hparams.lr_scheduler([self.optimizer], epoch, stage_loss)
        update_learning_rate(self.optimizer, next_lr)
        meta = {"epoch": epoch, "lr": current_lr, "steps": self.train_steps}
        if self.resumed_at_step:
            meta["resumed at step"] = self.resumed_at_step
        self.hparams.train_logger.log_stats(stats_meta=meta, train_stats=self.train_stats, valid_stats=stats)
        self.record_history(
            {"epoch": epoch, "lr": current_lr, "steps": self.train_steps, "resumed_at_step": self.resumed_at_step,
             "time": time.time(), "train": self.train_stats, "valid": stats}
        )
        self.checkpointer.save_and_keep_only(meta={"epoch": epoch, **stats}, min_keys=["loss"])

    @main_process_only
    def record_history(self, entry):
        """Append one JSON line to ``history_file`` (full precision, for plots and tests)."""
        with open(self.hparams.history_file, "a", encoding="utf-8") as stream:
            stream.write(json.dumps(entry) + "\n")

    def validate_initial_model(self, valid_data, loader_kwargs):
        """Validation loss of the model before any update, logged as epoch 0: the baseline a
        fine-tuning run starts from."""
        loader = sb.dataio.dataloader.make_dataloader(valid_data, **loader_kwargs)
        self.on_stage_start(sb.Stage.VALID, 0)
        self.modules.eval()
        with torch.no_grad():
            losses = [self.evaluate_batch(batch, sb.Stage.VALID) for batch in loader]
        self.on_stage_end(sb.Stage.VALID, float(torch.stack(losses).mean()), 0)

    def init_optimizers(self):
        super().init_optimizers()
        # After the optimizer, the last recoverable to register: its file is written last.
        if self.checkpointer is not None:
            self.checkpointer.add_recoverable(COMPLETE_MARKER, CompletenessMarker(), optional_load=True)

    def _wrap_distributed(self):
        # SpeechBrain turns batch norms into SyncBatchNorm, which only runs on accelerators: on
        # CPU (gloo) keep DDP with per-process batch statistics.
        if not (self.distributed_launch and self.device_type == "cpu"):
            return super()._wrap_distributed()
        for name, module in self.modules.items():
            if any(p.requires_grad for p in module.parameters()):
                self.modules[name] = DistributedDataParallel(module, find_unused_parameters=self.find_unused_parameters)


def read_rows(csv_path):
    """Rows of a manifest as dicts."""
    with open(csv_path, newline="", encoding="utf-8") as stream:
        return list(csv.DictReader(stream))


def dataio_prep(hparams, manifests, segment_samples):
    """Training (mixed on the fly) and validation (fixed mixtures) datasets."""
    sample_rate = hparams["sample_rate"]
    mixer = TrainingMixer(
        noises=read_rows(manifests["noise_train"]),
        rirs=read_rows(manifests["rir_train"]) if "rir_train" in manifests else [],
        segment_samples=segment_samples,
        snr_range_db=hparams["snr_range_db"],
        level_range_db=hparams["level_range_db"],
        reverb_probability=hparams["reverb_probability"],
        reverb_target=hparams["reverb_target"],
        sample_rate=sample_rate,
    )

    @sb.utils.data_pipeline.takes("wav", "frames")
    @sb.utils.data_pipeline.provides("noisy", "clean")
    def training_mixture(wav, frames):
        noisy, clean = mixer(wav, int(frames))
        yield noisy
        yield clean

    valid_columns = ("clean_wav", "clean_start", "noise_wav", "noise_start", "snr_db", "level_db", "rir_wav")

    @sb.utils.data_pipeline.takes(*valid_columns)
    @sb.utils.data_pipeline.provides("noisy", "clean")
    def fixed_mixture(*values):
        noisy, clean = validation_mixture(
            dict(zip(valid_columns, values)), segment_samples, sample_rate, hparams["reverb_target"]
        )
        yield noisy
        yield clean

    datasets = {}
    for name, pipeline in (("train", training_mixture), ("valid", fixed_mixture)):
        dataset = sb.dataio.dataset.DynamicItemDataset.from_csv(csv_path=manifests[name])
        dataset.add_dynamic_item(pipeline)
        dataset.set_output_keys(["id", "noisy", "clean"])
        datasets[name] = dataset
    return datasets["train"], datasets["valid"]


def load_official_weights(model, checkpoint, definition):
    """Fill ``model`` with official FRCRN weights, converted by ``frcrn_from_official``."""
    kwargs = {key: definition[key] for key in FRCRN_DEFINITION_KEYS if key in definition}
    model.load_state_dict(frcrn_from_official(checkpoint, **kwargs).state_dict())
    logger.info("Initialised FRCRN from the official weights in %s", checkpoint)


def within_time_budget(epochs, minutes):
    """The epochs of ``epochs`` that fit in ``minutes`` of training: it stops when the next
    epoch, if it takes as long as the last one, would end past the budget (the same decision on
    every process). ``minutes`` None or 0: no limit."""
    if not minutes:
        yield from epochs
        return
    deadline = time.monotonic() + 60 * float(minutes)
    for epoch in epochs:
        started = time.monotonic()
        yield epoch
        finished = time.monotonic()
        if ddp_broadcast(finished + (finished - started) > deadline):
            logger.info("Stopping after epoch %d: another would not fit in max_train_minutes=%s", epoch, minutes)
            return


@torch.no_grad()
def enhance(model, noisy, device):
    """Enhance one whole ``[T]`` waveform; the input is zero-padded to whole frames so that every
    sample comes back."""
    length = noisy.shape[-1]
    frames = max(1, math.ceil((length - model.win_len) / model.win_inc) + 1)
    padded = F.pad(noisy, (0, (frames - 1) * model.win_inc + model.win_len - length))
    return model(padded[None].to(device))[0, :length].float().cpu()


def evaluate_test_sets(hparams, manifests, device):
    """Enhance each synthetic test subset with the current model, write the enhanced files and
    the per-file / summary CSVs and spectrograms; run on the main process only."""
    model = hparams["model"].eval()
    for subset in hparams["test_subsets"]:
        if f"test_{subset}" not in manifests:
            continue
        folder = os.path.join(hparams["enhanced_folder"], subset)
        os.makedirs(folder, exist_ok=True)
        items = []
        for row in read_rows(manifests[f"test_{subset}"]):
            noisy, rate = sf.read(row["noisy_wav"], dtype="float32", always_2d=True)
            if rate != hparams["sample_rate"]:
                raise ValueError(f"{row['noisy_wav']} is at {rate} Hz, the model at {hparams['sample_rate']} Hz")
            enhanced = enhance(model, torch.from_numpy(noisy[:, 0].copy()), device)
            path = os.path.join(folder, os.path.basename(row["noisy_wav"]))
            sf.write(path, enhanced.numpy(), rate, subtype="FLOAT")  # float: scores are not quantised
            items.append(EvaluationItem(row["ID"], row["clean_wav"], path, row["noisy_wav"]))
        result = evaluate_items(items)
        csv_path = os.path.join(hparams["output_folder"], f"test_results_{subset}.csv")
        write_csv(result, csv_path)
        plot_spectrograms(items, os.path.join(hparams["output_folder"], f"test_spectrograms_{subset}.png"))
        hparams["train_logger"].log_stats(
            stats_meta={"test set": f"synthetic/{subset}", "files": len(items)},
            test_stats=result.summary["enhanced"],
        )
        logger.info("synthetic/%s (%d files):\n%s", subset, len(items), format_summary(result.summary))


def complete_run_options(run_opts):
    """Two adjustments to SpeechBrain's command-line run options.

    - Multi-process runs on a machine without CUDA use gloo unless a backend was chosen
      (SpeechBrain defaults to nccl, which needs GPUs).
    - ``--optimizer_step_limit`` arrives as a string (its default is None, so SpeechBrain's
      parser gives it no type) and would fail at the first comparison: make it an int.
    """
    changes = {}
    if not torch.cuda.is_available() and "distributed_backend" not in run_opts.overridden_args:
        changes["distributed_backend"] = "gloo"
    if isinstance(run_opts.optimizer_step_limit, str):
        changes["optimizer_step_limit"] = int(run_opts.optimizer_step_limit)
    if not changes:
        return run_opts
    return dataclasses.replace(run_opts, **changes, overridden_args=run_opts.overridden_args | set(changes))


def main(argv):
    hparams_file, run_opts, overrides = sb.parse_arguments(argv)
    run_opts = complete_run_options(run_opts)
    with open(hparams_file, encoding="utf-8") as stream:
        hparams = load_hyperpyyaml(stream, overrides)

    sb.utils.distributed.ddp_init_group(run_opts)
    sb.create_experiment_directory(
        experiment_directory=hparams["output_folder"], hyperparams_to_save=hparams_file, overrides=overrides
    )
    definition = hparams["frcrn"]
    segment_samples = whole_frames_length(
        int(round(hparams["segment_seconds"] * hparams["sample_rate"])), definition["win_len"], definition["win_inc"]
    )
    try:
        manifests = run_on_main(
            prepare_dns,
            kwargs={
                "data_folder": hparams["data_folder"],
                "save_folder": hparams["save_folder"],
                "segment_samples": segment_samples,
                "sample_rate": hparams["sample_rate"],
                "valid_fraction": hparams["valid_fraction"],
                "num_valid_mixtures": hparams["num_valid_mixtures"],
                "snr_range_db": hparams["snr_range_db"],
                "level_range_db": hparams["level_range_db"],
                "reverb_probability": hparams["reverb_probability"],
                "test_subsets": hparams["test_subsets"],
                "seed": hparams["seed"],
            },
        )
    except DNSLayoutError as error:
        raise SystemExit(f"error: {error}") from None
    train_data, valid_data = dataio_prep(hparams, manifests, segment_samples)
    # SpeechBrain seeds every process alike; the on-the-fly mixing should differ between them.
    rank = get_rank() or 0
    if rank:
        torch.manual_seed(hparams["seed"] + 1000 * rank)

    checkpointer = hparams["checkpointer"]
    run_on_main(discard_incomplete_checkpoints, args=[checkpointer.checkpoints_dir])
    resuming = checkpointer.find_checkpoint() is not None
    opt_class = hparams["opt_class"]
    pretrained_path = hparams["pretrained_path"]
    if pretrained_path:
        opt_class = functools.partial(opt_class, lr=hparams["finetune_lr"])
        if resuming:
            logger.info("Resuming from a checkpoint: pretrained_path is not loaded again")
        else:
            load_official_weights(hparams["model"], pretrained_path, definition)

    brain = EnhancementBrain(
        modules={"enhancer": FRCRNStages(hparams["model"])},
        opt_class=opt_class,
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=checkpointer,
    )
    if pretrained_path and not resuming and not brain.test_only:
        brain.validate_initial_model(valid_data, hparams["valid_dataloader_opts"])
    brain.fit(
        within_time_budget(hparams["epoch_counter"], hparams["max_train_minutes"]),
        train_data,
        valid_data,
        train_loader_kwargs=hparams["train_dataloader_opts"],
        valid_loader_kwargs=hparams["valid_dataloader_opts"],
    )

    checkpointer.recover_if_possible(min_key="loss")  # the best model, on every process
    run_on_main(evaluate_test_sets, args=[hparams, manifests, brain.device])


if __name__ == "__main__":
    main(sys.argv[1:])

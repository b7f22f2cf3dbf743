"""The Brain every recipe of this repository trains with, and the run plumbing around it.

- :class:`RecipeBrain`: a :class:`speechbrain.Brain` with what all tasks share: checkpoints that
  carry a completeness marker, multi-process runs on CPU (gloo), batches skipped (on every
  process together) when their loss is unusable, validation statistics gathered per batch, one
  history line (JSON) per epoch, checkpoints kept by validation loss, learning-rate scheduling,
  and the validation of the initial (e.g. pretrained) model logged as epoch 0. The task Brains
  (:mod:`speechbrain_ext.training.enhancement`, :mod:`speechbrain_ext.training.separation`) add
  only their forward, loss and statistics.
- :func:`discard_incomplete_checkpoints`: deletes checkpoints an interrupted save left behind;
- :func:`complete_run_options`: gloo on machines without CUDA, ``--optimizer_step_limit`` as an
  int;
- :func:`within_time_budget`: stops before an epoch that would end past a time budget;
- :func:`reseed_per_process`: different on-the-fly data in every DDP process;
- :func:`read_rows`: the rows of a CSV manifest.

Authors
 * speechbrain-ext contributors
"""

import csv
import dataclasses
import glob
import json
import logging
import os
import shutil
import time

import speechbrain as sb
import torch
from speechbrain.nnet.schedulers import update_learning_rate
from speechbrain.utils.checkpoints import mark_as_loader, mark_as_saver, register_checkpoint_hooks
from speechbrain.utils.distributed import ddp_broadcast, get_rank, if_main_process, main_process_only
from torch.nn.parallel import DistributedDataParallel

from speechbrain_ext.memory import recycled_memory, release_free_memory

logger = logging.getLogger(__name__)

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
    """Delete the checkpoints an interrupted save left without their completeness marker.

    Example
    -------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> os.makedirs(os.path.join(folder, "CKPT+2024-01-01+00-00-00+00"))
    >>> discard_incomplete_checkpoints(folder)
    >>> os.listdir(folder)
    []
    """
    for path in sorted(glob.glob(os.path.join(checkpoints_dir, "CKPT+*"))):
        if os.path.isdir(path) and not os.path.isfile(os.path.join(path, f"{COMPLETE_MARKER}.ckpt")):
            logger.warning("Deleting %s: the run was interrupted while saving it", path)
            shutil.rmtree(path)


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


def within_time_budget(epochs, minutes):
    """The epochs of ``epochs`` that fit in ``minutes`` of training: it stops when the next
    epoch, if it takes as long as the last one, would end past the budget (the same decision on
    every process). ``minutes`` None or 0: no limit.

    Example
    -------
    >>> list(within_time_budget(range(1, 4), minutes=None))
    [1, 2, 3]
    """
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


def reseed_per_process(seed):
    """Seed torch's generator differently in every DDP process but the main one.

    SpeechBrain seeds every process alike; on-the-fly mixing should differ between them.
    """
    rank = get_rank() or 0
    if rank:
        torch.manual_seed(seed + 1000 * rank)


def read_rows(csv_path):
    """Rows of a manifest as dicts."""
    with open(csv_path, newline="", encoding="utf-8") as stream:
        return list(csv.DictReader(stream))


def _mean(values):
    return float(sum(values) / len(values)) if values else float("nan")


class RecipeBrain(sb.Brain):
    """A :class:`speechbrain.Brain` with what every task of this repository shares.

    A task Brain implements ``compute_forward`` and ``compute_objectives`` (returning the loss
    of every item, ``[B]``, or of the batch) and, in ``compute_objectives`` outside training,
    hands per-item quality scores to :meth:`record_scores`. The rest is here:

    - Every checkpoint gets a completeness marker, written last (:class:`CompletenessMarker`).
    - On CPU, :meth:`fit` runs in :func:`speechbrain_ext.memory.recycled_memory`: a training
      step allocates and frees the same large maps as the step before, and reusing their
      pages instead of faulting them in again made steady steps faster (MossFormer at 1 s:
      3.9 s against 4.4-4.6 s; FRCRN, B=2 at 1 s: 3.0 against 3.2 s). What the process holds
      freed is given back after each validation. DataLoader workers forked meanwhile inherit
      the setting: they keep their own (small) peak heap until they exit.
    - Multi-process runs on CPU (gloo) wrap the modules in DDP without SpeechBrain's
      SyncBatchNorm conversion, which only runs on accelerators: batch norms keep
      per-process statistics there.
    - :meth:`fit_batch` skips a batch (no update, counted as ``skipped_batches``) when
      :meth:`training_loss` finds its loss unusable: not finite, at or above
      ``loss_upper_lim``, or, with ``threshold_byloss``, every item already below
      ``threshold`` (SpeechBrain's separation recipes); in multi-process runs every process skips
      together.
    - Statistics per stage: the loss, and the mean score of the estimates and its improvement
      over the inputs (named by ``SCORE_NAMES``); one JSON line per epoch in
      ``hparams.history_file``; the ``lr_scheduler`` (optional) follows the validation loss;
      the checkpoint with the lowest validation loss is kept, and the last
      ``keep_last_epochs`` end-of-epoch checkpoints (default 1), e.g. to average them
      (:func:`speechbrain.utils.checkpoints.average_checkpoints`).
    - :meth:`validate_initial_model` validates the model before any update and hands the
      result to ``on_stage_end(Stage.VALID, loss, epoch=0)``.
    """

    #: Names of the validation statistics: the estimates' mean score, and its improvement
    #: over the inputs' (the task Brains set them).
    SCORE_NAMES = ("score", "score_improvement")

    def init_optimizers(self):
        super().init_optimizers()
        # After the optimizer, the last recoverable to register: its file is written last.
        if self.checkpointer is not None:
            self.checkpointer.add_recoverable(COMPLETE_MARKER, CompletenessMarker(), optional_load=True)

    def _wrap_distributed(self):
        if not (self.distributed_launch and self.device_type == "cpu"):
            return super()._wrap_distributed()
        for name, module in self.modules.items():
            if any(p.requires_grad for p in module.parameters()):
                self.modules[name] = DistributedDataParallel(module, find_unused_parameters=self.find_unused_parameters)

    def fit(self, *args, **kwargs):
        """:meth:`speechbrain.Brain.fit`, on CPU keeping freed memory for reuse until it returns."""
        with recycled_memory(enabled=self.device_type == "cpu"):
            return super().fit(*args, **kwargs)

    # ---- losses and steps ----------------------------------------------------------------

    def training_loss(self, losses):
        """The loss to minimise, or None when the batch is to be skipped (see the class)."""
        if not bool(torch.isfinite(losses).all()):
            return None
        if getattr(self.hparams, "threshold_byloss", False) and losses.dim() > 0:
            losses = losses[losses > self.hparams.threshold]
            if losses.numel() == 0:
                return None
        loss = losses.mean()
        if loss >= getattr(self.hparams, "loss_upper_lim", float("inf")):
            return None
        return loss

    def _skip_everywhere(self, skip):
        """True on every process when any process must skip its batch (DDP needs all of them to
        run the backward pass, or none)."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            flag = torch.tensor(float(skip), device=self.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            return bool(flag.item())
        return skip

    def fit_batch(self, batch):
        """One training step, or none when the batch's loss is unusable (see the class)."""
        should_step = (self.step % self.grad_accumulation_factor) == 0
        self.on_fit_batch_start(batch, should_step)
        with self.no_sync(not should_step):
            with self.training_ctx:
                predictions = self.compute_forward(batch, sb.Stage.TRAIN)
                losses = self.compute_objectives(predictions, batch, sb.Stage.TRAIN)
            loss = self.training_loss(losses)
            if self._skip_everywhere(loss is None):
                self.nonfinite_count += 1
                logger.warning(
                    "Skipping a batch: its loss is not finite, above loss_upper_lim or below the threshold "
                    "for every item (%d skipped this epoch)", self.nonfinite_count,
                )
                self.optimizer.zero_grad(set_to_none=True)
                return torch.tensor(float("nan"))
            self.scaler.scale(loss / self.grad_accumulation_factor).backward()
        if should_step:
            self.optimizers_step()
        self.on_fit_batch_end(batch, predictions, loss, should_step)
        return loss.detach().cpu()

    @torch.no_grad()
    def evaluate_batch(self, batch, stage):
        with self.evaluation_ctx:
            predictions = self.compute_forward(batch, stage)
        return self.compute_objectives(predictions, batch, stage).mean().detach().cpu()

    # ---- statistics ------------------------------------------------------------------------

    def record_scores(self, estimates, inputs):
        """Per-item scores of the estimates and of the unprocessed inputs (validation, test)."""
        self.scores.extend(torch.as_tensor(estimates).flatten().tolist())
        self.input_scores.extend(torch.as_tensor(inputs).flatten().tolist())

    def on_stage_start(self, stage, epoch=None):
        self.scores, self.input_scores = [], []
        if stage == sb.Stage.TRAIN:
            # Non-zero when an intra-epoch checkpoint was recovered: the epoch continues there.
            self.resumed_at_step = self.step

    def on_stage_end(self, stage, stage_loss, epoch=None):
        stats = {"loss": stage_loss}
        if self.scores:
            score, improvement = self.SCORE_NAMES
            stats[score] = _mean(self.scores)
            stats[improvement] = stats[score] - _mean(self.input_scores)
        if stage == sb.Stage.TRAIN:
            self.train_stats = {**stats, "skipped_batches": self.nonfinite_count}
            self.train_steps = self.step
        elif stage == sb.Stage.VALID:
            self.end_validation(epoch, stage_loss, stats)
            release_free_memory()  # whole utterances: larger maps than the training steps'

    @main_process_only
    def record_history(self, entry):
        """Append one JSON line to ``history_file`` (full precision, for plots and tests)."""
        with open(self.hparams.history_file, "a", encoding="utf-8") as stream:
            stream.write(json.dumps(entry) + "\n")

    def end_validation(self, epoch, stage_loss, stats):
        """After a validation pass: log epoch 0 (the model before any update) as such; otherwise
        step the (optional) ``lr_scheduler``, log train/valid stats, append the history line and
        keep the checkpoint with the lowest loss."""
        if epoch == 0:  # the initial (pretrained) model, before any update
            self.hparams.train_logger.log_stats(stats_meta={"epoch": 0, "model": "initial"}, valid_stats=stats)
            self.record_history({"epoch": 0, "valid": stats})
            return
        current_lr = self.optimizer.param_groups[0]["lr"]
        scheduler = getattr(self.hparams, "lr_scheduler", None)
        if scheduler is not None:
            current_lr, next_lr = scheduler([self.optimizer], epoch, stage_loss)
            update_learning_rate(self.optimizer, next_lr)
        meta = {"epoch": epoch, "lr": current_lr, "steps": self.train_steps}
        if self.resumed_at_step:
            meta["resumed at step"] = self.resumed_at_step
        self.hparams.train_logger.log_stats(stats_meta=meta, train_stats=self.train_stats, valid_stats=stats)
        self.record_history(
            {"epoch": epoch, "lr": current_lr, "steps": self.train_steps, "resumed_at_step": self.resumed_at_step,
             "time": time.time(), "train": self.train_stats, "valid": stats}
        )
        self.checkpointer.save_and_keep_only(
            meta={"epoch": epoch, **stats}, min_keys=["loss"], max_keys=["epoch"],
            num_to_keep=getattr(self.hparams, "keep_last_epochs", 1),
        )

    def validate_initial_model(self, valid_data, loader_kwargs):
        """Validation loss of the model before any update, handed to ``on_stage_end`` as
        epoch 0: the baseline a fine-tuning run starts from."""
        loader = sb.dataio.dataloader.make_dataloader(valid_data, **loader_kwargs)
        self.on_stage_start(sb.Stage.VALID, 0)
        self.modules.eval()
        with torch.no_grad():
            losses = [self.evaluate_batch(batch, sb.Stage.VALID) for batch in loader]
        self.on_stage_end(sb.Stage.VALID, float(torch.stack(losses).mean()), 0)

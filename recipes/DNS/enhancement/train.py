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

import functools
import logging
import math
import os
import sys

import soundfile as sf
import speechbrain as sb
import torch
import torch.nn.functional as F
from hyperpyyaml import load_hyperpyyaml
from speechbrain.utils.distributed import run_on_main

from speechbrain_ext.convert import frcrn_from_official
from speechbrain_ext.evaluation import EvaluationItem, evaluate_items, format_summary, plot_spectrograms, write_csv
from speechbrain_ext.inference import EnhanceFRCRN
from speechbrain_ext.lobes.models.frcrn import frcrn_loss, si_snr
from speechbrain_ext.recipes_common import (
    RecipeBrain,
    complete_run_options,
    discard_incomplete_checkpoints,
    export_model,
    read_rows,
    reseed_per_process,
    within_time_budget,
)

from dynamic_mixing import TrainingMixer, validation_mixture, whole_frames_length
from prepare_dns import DNSLayoutError, prepare_dns

logger = logging.getLogger(__name__)

# Constructor arguments of FRCRN that the model definition (hparams/frcrn.yaml) sets.
FRCRN_DEFINITION_KEYS = ("win_len", "win_inc", "fft_len", "win_type", "channels", "fsmn_hidden", "fsmn_order",
                         "se_reduction", "causal")
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


class EnhancementBrain(RecipeBrain):
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
        self.end_validation(epoch, stage_loss, stats)

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
    reseed_per_process(hparams["seed"])

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
    run_on_main(export_model, args=[EnhanceFRCRN, {"model": hparams["model"]},
                                    {"sample_rate": hparams["sample_rate"]}, hparams["output_folder"]])


if __name__ == "__main__":
    main(sys.argv[1:])

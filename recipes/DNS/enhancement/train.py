#!/usr/bin/env python3
"""Recipe for training FRCRN (16 kHz) or MossFormer2 (48 kHz fullband) speech enhancement on the
DNS-Challenge data (the interspeech2020 wideband layout or the fullband one).

Noisy/clean pairs are mixed on the fly from the DNS clean speech, noise and (optionally) room
impulse responses (:class:`speechbrain_ext.training.mixing.NoiseMixer`); validation uses a
fixed, seeded set of mixtures (``prepare_dns.py``); at the end the best checkpoint enhances the
synthetic test set and is scored with PESQ-WB/NB, STOI and SI-SNR, and is exported to
``<output_folder>/model``. The training itself is :class:`speechbrain_ext.training.EnhancementBrain`:
the model, its loss and its pretrained loader are named in the yaml, so another enhancement
model trains on this data with another yaml.

To run it:

    python train.py hparams/frcrn.yaml --data_folder /path/to/DNS-Challenge
    python train.py hparams/frcrn_small.yaml --data_folder ...          # quick experiments
    torchrun --nproc_per_node=4 train.py hparams/frcrn.yaml --data_folder ...
    python train.py hparams/frcrn.yaml --data_folder ... --pretrained_path pytorch_model.bin
    python train.py hparams/mossformer2_se.yaml --data_folder ...       # fullband, 48 kHz
    python train.py hparams/mossformergan.yaml --data_folder ...        # MossFormerGAN generator, 16 kHz
    python train.py hparams/mossformer2_se.yaml --data_folder ... --pretrained_path /path/to/MossFormer2_SE_48K

``--pretrained_path`` starts from official FRCRN weights (ModelScope ``pytorch_model.bin`` or a
ClearerVoice-Studio checkpoint) and trains with ``finetune_lr`` instead of ``lr``; the
model's validation loss before any update is logged as epoch 0. Rerunning the same command
after an interruption resumes from the last checkpoint (also mid-epoch: ``ckpt_interval_minutes``).
On machines without a GPU, multi-process runs use the gloo backend.

Authors
 * speechbrain-ext contributors
"""

import functools
import sys

import speechbrain as sb
from speechbrain.utils.distributed import run_on_main

from speechbrain_ext.audio import whole_frames_length
from speechbrain_ext.training import EnhancementBrain, evaluate_enhancement, prepare_experiment, train_and_evaluate
from speechbrain_ext.training.brain import read_rows, reseed_per_process
from speechbrain_ext.training.mixing import NoiseMixer

from prepare_dns import DNSLayoutError, prepare_dns, validation_mixture


def dns_datasets(hparams, manifests, segment_samples):
    """Training (mixed on the fly) and validation (fixed mixtures) datasets of ``noisy``/``clean``."""
    sample_rate = hparams["sample_rate"]
    mixer = NoiseMixer(
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
        yield from mixer(wav, int(frames))

    valid_columns = ("clean_wav", "clean_start", "noise_wav", "noise_start", "snr_db", "level_db", "rir_wav")

    @sb.utils.data_pipeline.takes(*valid_columns)
    @sb.utils.data_pipeline.provides("noisy", "clean")
    def fixed_mixture(*values):
        yield from validation_mixture(dict(zip(valid_columns, values)), segment_samples, sample_rate,
                                      hparams["reverb_target"])

    datasets = []
    for name, pipeline in (("train", training_mixture), ("valid", fixed_mixture)):
        dataset = sb.dataio.dataset.DynamicItemDataset.from_csv(csv_path=manifests[name])
        dataset.add_dynamic_item(pipeline)
        dataset.set_output_keys(["id", "noisy", "clean"])
        datasets.append(dataset)
    return datasets


def main(argv):
    hparams, run_opts = prepare_experiment(argv)
    segment_samples = int(round(hparams["segment_seconds"] * hparams["sample_rate"]))
    model = hparams["model"]
    if hasattr(model, "win_len"):  # whole frames: FRCRN's loss compares the enhanced signal with the target
        segment_samples = whole_frames_length(segment_samples, model.win_len, model.win_inc, rounding="nearest")
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
    train_data, valid_data = dns_datasets(hparams, manifests, segment_samples)
    test_sets = {subset: read_rows(manifests[f"test_{subset}"])
                 for subset in hparams["test_subsets"] if f"test_{subset}" in manifests}
    # SpeechBrain seeds every process alike; the on-the-fly mixing should differ between them.
    reseed_per_process(hparams["seed"])
    train_and_evaluate(EnhancementBrain, hparams, run_opts, train_data, valid_data,
                       evaluate=functools.partial(evaluate_enhancement, test_sets))


if __name__ == "__main__":
    main(sys.argv[1:])

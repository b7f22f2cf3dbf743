#!/usr/bin/env python3
"""Recipe for training MossFormer / MossFormer2 speech separation on WHAM! (wsj0-2mix with noise).

The same training as ``recipes/WSJ0Mix/separation`` (permutation-invariant SI-SNR, loss
threshold, skipped non-finite losses, gradient clipping, optional mixed precision, dynamic
mixing, speed perturbation, fine-tuning from the official weights, ``test_results.csv`` with
SDR, SDRi, SI-SNR, SI-SNRi), on noisy mixtures; the targets are the clean sources. The noisy
mixtures come from the generated WHAM! layout (``mix_both``) or are made on the fly from the
wsj0-2mix sources and the WHAM! noise corpus (``--wham_noise_folder``); see ``prepare_data.py``.

To run it:

    python train.py hparams/mossformer.yaml --data_folder /path/to/wham        # generated WHAM!
    python train.py hparams/mossformer.yaml --data_folder /path/to/wsj0-mix/2speakers \\
        --wham_noise_folder /path/to/wham_noise                                  # noise on the fly
    python train.py hparams/mossformer_small.yaml --data_folder ...             # quick experiments
    python train.py hparams/mossformer2.yaml --data_folder ...           # MossFormer2, 16 kHz
    torchrun --nproc_per_node=4 train.py hparams/mossformer.yaml --data_folder ...
    python train.py hparams/mossformer.yaml --data_folder ... --pretrained_path /path/to/official_model

Rerunning the same command after an interruption resumes from the last checkpoint.

Authors
 * speechbrain-ext contributors
"""

import functools
import sys

from speechbrain.utils.distributed import run_on_main

from speechbrain_ext.training import (
    MixLayoutError,
    SeparationBrain,
    evaluate_separation,
    prepare_experiment,
    reseed_per_process,
    separation_datasets,
    train_and_evaluate,
)

from prepare_data import prepare_wham


def main(argv):
    hparams, run_opts = prepare_experiment(argv)
    try:
        manifests = run_on_main(
            prepare_wham,
            kwargs={
                "data_folder": hparams["data_folder"],
                "save_folder": hparams["save_folder"],
                "sample_rate": hparams["sample_rate"],
                "mode": hparams["mode"],
                "wham_noise_folder": hparams["wham_noise_folder"],
                "snr_range_db": hparams["snr_range_db"],
                "seed": hparams["seed"],
                "skip_prep": hparams["skip_prep"],
            },
        )
        train_data, valid_data, test_data = separation_datasets(hparams, manifests)
    except MixLayoutError as error:
        raise SystemExit(f"error: {error}") from None
    # SpeechBrain seeds every process alike; the on-the-fly mixing should differ between them.
    reseed_per_process(hparams["seed"])
    train_and_evaluate(SeparationBrain, hparams, run_opts, train_data, valid_data,
                       evaluate=functools.partial(evaluate_separation, test_data))


if __name__ == "__main__":
    main(sys.argv[1:])

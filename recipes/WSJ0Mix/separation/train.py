#!/usr/bin/env python3
"""Recipe for training MossFormer / MossFormer2 speech separation on wsj0-2mix / wsj0-3mix.

The separator is the encoder / masknet / decoder of ``hparams/mossformer.yaml`` at the
repository root (the official MossFormer, SepFormer's contract), trained as SpeechBrain trains
SepFormer: permutation-invariant SI-SNR, the loss threshold of SpeechBrain's recipes, skipped
non-finite losses, gradient clipping, optional mixed precision, the learning rate halved on
validation plateaus, optional dynamic mixing (two or three different wsj0 speakers per mixture)
and speed perturbation. At the end the best checkpoint separates the test set and the scores
go to ``test_results.csv`` (SDR, SDRi, SI-SNR, SI-SNRi per mixture and their average).

To run it:

    python train.py hparams/mossformer.yaml --data_folder /path/to/wsj0-mix/2speakers
    python train.py hparams/mossformer.yaml --data_folder /path/to/wsj0-mix/3speakers --num_spks 3
    python train.py hparams/mossformer.yaml --data_folder ... --dynamic_mixing True
    python train.py hparams/mossformer_small.yaml --data_folder ...      # quick experiments
    python train.py hparams/mossformer2.yaml --data_folder ...           # MossFormer2, 16 kHz
    torchrun --nproc_per_node=4 train.py hparams/mossformer.yaml --data_folder ...
    python train.py hparams/mossformer.yaml --data_folder ... --pretrained_path /path/to/official_model

``--pretrained_path`` starts from the official 8 kHz weights (a folder with ``encoder.bin``,
``masknet.bin``, ``decoder.bin``, e.g. ModelScope's iic/speech_mossformer_separation_temporal_8k)
and trains with ``finetune_lr``; the validation of those weights, before any update, is logged
as epoch 0. Rerunning the same command after an interruption resumes from the last checkpoint.
On machines without a GPU, multi-process runs use the gloo backend.

The shared machinery (manifests, mixing, the Brain, evaluation) is ``speechbrain_ext.training``;
this script wires it to the wsj0-mix layout. Another separator with the encoder / masknet /
decoder contract trains here with another yaml.

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

from prepare_data import prepare_wsjmix


def main(argv):
    hparams, run_opts = prepare_experiment(argv)
    try:
        manifests = run_on_main(
            prepare_wsjmix,
            kwargs={
                "data_folder": hparams["data_folder"],
                "save_folder": hparams["save_folder"],
                "num_spks": hparams["num_spks"],
                "sample_rate": hparams["sample_rate"],
                "mode": hparams["mode"],
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

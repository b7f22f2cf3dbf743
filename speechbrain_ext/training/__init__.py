"""Training any enhancement or separation model with SpeechBrain: one house for all recipes.

A new model trains by adding its model file and a yaml, with no new Brain code:

================================  ==============================================================
module                            what
================================  ==============================================================
:mod:`.brain`                     :class:`RecipeBrain`: the hooks every task shares (checkpoints,
                                  DDP on CPU, skipped batches, statistics, history, schedules)
:mod:`.enhancement`               :class:`EnhancementBrain` (any ``enhancer`` + ``compute_loss``),
                                  :func:`evaluate_enhancement` of test sets
:mod:`.separation`                :class:`SeparationBrain` (any encoder / masknet / decoder, PIT),
                                  :func:`separation_datasets`, :func:`evaluate_separation`
:mod:`.mixing`                    noisy speech and speaker mixtures made on the fly
:mod:`.manifests`                 manifests of wsj0-mix-style folder layouts
:mod:`.run`                       :func:`prepare_experiment`, :func:`train_and_evaluate`,
                                  :func:`export_model`
================================  ==============================================================

Dataset layouts stay with their recipes (``recipes/<Dataset>/<task>/prepare_*.py``), except the
wsj0-mix folder layout: WSJ0Mix and WHAM! both read it, so it is read (and its errors worded) in
one place, :mod:`.manifests`, and each recipe's ``prepare_data.py`` says which dataset it is.
Audio is read by :mod:`speechbrain_ext.audio`, as everywhere in the package.

Authors
 * speechbrain-ext contributors
"""

from speechbrain_ext.training.brain import RecipeBrain, read_rows, reseed_per_process
from speechbrain_ext.training.enhancement import EnhancementBrain, evaluate_enhancement, negative_si_snr
from speechbrain_ext.training.mixing import MixLayoutError
from speechbrain_ext.training.run import export_model, prepare_experiment, train_and_evaluate
from speechbrain_ext.training.separation import SeparationBrain, evaluate_separation, separation_datasets

__all__ = [
    "EnhancementBrain",
    "MixLayoutError",
    "RecipeBrain",
    "SeparationBrain",
    "evaluate_enhancement",
    "evaluate_separation",
    "export_model",
    "negative_si_snr",
    "prepare_experiment",
    "read_rows",
    "reseed_per_process",
    "separation_datasets",
    "train_and_evaluate",
]

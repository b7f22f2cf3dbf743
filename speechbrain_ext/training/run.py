"""One run of any recipe: experiment setup, fit (resumable, optionally fine-tuning), test, export.

Every recipe's ``train.py`` is the same three steps around its own data::

    hparams, run_opts = prepare_experiment(sys.argv[1:])
    train, valid, test = <the recipe's datasets>(hparams)
    train_and_evaluate(EnhancementBrain, hparams, run_opts, train, valid,
                       evaluate=functools.partial(evaluate_enhancement, test_sets))

What the yaml may name, besides SpeechBrain's usual keys (``modules``, ``opt_class``,
``checkpointer``, ``epoch_counter``, dataloader options):

- ``pretrained_path`` + ``load_pretrained`` (a callable taking ``checkpoint=``, e.g.
  ``!name:speechbrain_ext.convert.load_frcrn_official`` with ``model: !ref <model>``) and
  ``finetune_lr``: start from (official) weights, validated before any update as epoch 0;
- ``max_train_minutes``: no epoch starts that would end past it;
- ``inference_interface`` (e.g. ``!name:speechbrain_ext.inference.EnhanceFRCRN``): the best
  model is exported as ``<output_folder>/model``, a SpeechBrain-format folder.

Authors
 * speechbrain-ext contributors
"""

import copy
import functools
import logging
import os

import speechbrain as sb
from hyperpyyaml import load_hyperpyyaml
from speechbrain.utils.distributed import run_on_main

from speechbrain_ext.training.brain import complete_run_options, discard_incomplete_checkpoints, within_time_budget

logger = logging.getLogger(__name__)

#: Where a run writes its best model, under its ``output_folder``.
EXPORTED_MODEL = "model"


def prepare_experiment(argv):
    """Parse the command line (SpeechBrain's), load the yaml with its overrides, start the DDP
    group (gloo without CUDA) and create the experiment folder.

    Returns
    -------
    tuple
        ``(hparams, run_opts)``.
    """
    hparams_file, run_opts, overrides = sb.parse_arguments(argv)
    run_opts = complete_run_options(run_opts)
    with open(hparams_file, encoding="utf-8") as stream:
        hparams = load_hyperpyyaml(stream, overrides)
    sb.utils.distributed.ddp_init_group(run_opts)
    sb.create_experiment_directory(
        experiment_directory=hparams["output_folder"], hyperparams_to_save=hparams_file, overrides=overrides
    )
    return hparams, run_opts


def _load_pretrained(hparams, resuming):
    """Start from ``pretrained_path`` unless resuming; returns the optimizer class to use."""
    from speechbrain_ext.convert import CheckpointMismatchError

    opt_class, path = hparams["opt_class"], hparams.get("pretrained_path")
    if not path:
        return opt_class
    if resuming:
        logger.info("Resuming from a checkpoint: pretrained_path is not loaded again")
    else:
        try:
            hparams["load_pretrained"](checkpoint=path)
        except (OSError, CheckpointMismatchError) as error:
            raise SystemExit(f"error: cannot load --pretrained_path {path}: {error}") from None
        logger.info("Initialised the model from %s", path)
    return functools.partial(opt_class, lr=hparams["finetune_lr"])


def train_and_evaluate(brain_class, hparams, run_opts, train_data, valid_data, evaluate=None):
    """Fit (resuming from the last complete checkpoint; with ``pretrained_path`` starting from
    those weights at ``finetune_lr``, their validation logged as epoch 0), recover the best
    checkpoint, run ``evaluate(hparams, device)`` on the main process and export the model
    (``inference_interface``).

    Returns
    -------
    RecipeBrain
        The trained ``brain_class`` instance.
    """
    checkpointer = hparams["checkpointer"]
    run_on_main(discard_incomplete_checkpoints, args=[checkpointer.checkpoints_dir])
    resuming = checkpointer.find_checkpoint() is not None
    opt_class = _load_pretrained(hparams, resuming)
    brain = brain_class(
        modules=hparams["modules"], opt_class=opt_class, hparams=hparams, run_opts=run_opts, checkpointer=checkpointer
    )
    if hparams.get("pretrained_path") and not resuming and not brain.test_only:
        brain.validate_initial_model(valid_data, hparams["valid_dataloader_opts"])
    brain.fit(
        within_time_budget(hparams["epoch_counter"], hparams.get("max_train_minutes")),
        train_data,
        valid_data,
        train_loader_kwargs=hparams["train_dataloader_opts"],
        valid_loader_kwargs=hparams["valid_dataloader_opts"],
    )
    checkpointer.recover_if_possible(min_key="loss")  # the best model, on every process
    if evaluate is not None:
        run_on_main(evaluate, args=[hparams, brain.device])
    if hparams.get("inference_interface") is not None:
        run_on_main(export_model, args=[hparams["inference_interface"], hparams])
    return brain


def export_model(interface_class, hparams):
    """Write the trained model as ``<output_folder>/model``, a SpeechBrain-format folder (a
    previous run's export is replaced) that ``from_hparams`` loads and ``speechbrain-ext convert``
    turns into ModelScope or ClearerVoice-Studio folders. Copies are written, so the training
    modules stay where they are (device, mode).

    Arguments
    ---------
    interface_class : type
        :class:`~speechbrain_ext.inference.EnhanceFRCRN` or
        :class:`~speechbrain_ext.inference.SeparateMossFormer`; its ``MODULES_NEEDED`` and
        ``HPARAMS_NEEDED`` are taken from ``hparams``.
    hparams : dict

    Returns
    -------
    str
        The folder written.
    """
    from speechbrain_ext.model_folders import write_model_folder

    modules = {name: copy.deepcopy(hparams[name]).cpu().eval() for name in interface_class.MODULES_NEEDED}
    interface = interface_class(modules=modules, hparams={k: hparams[k] for k in interface_class.HPARAMS_NEEDED})
    output_folder = hparams["output_folder"]
    folder = os.path.join(output_folder, EXPORTED_MODEL)
    write_model_folder(interface, folder, "speechbrain", source=f"the recipe run in {output_folder}",
                       replace_own=True)
    logger.info("Best model written to %s (load it with from_hparams(source=...); "
                "`speechbrain-ext convert --to modelscope|clearervoice` converts it)", folder)
    return folder

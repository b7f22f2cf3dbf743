"""Training and test evaluation of speech enhancement models, whatever the model.

The model contract, all in the recipe's yaml:

* ``modules: {enhancer: ...}``: the module trained; ``enhancer(noisy [B, T])`` returns its
  *predictions*: the enhanced waveform ``[B, T]``, or anything ``compute_loss`` takes (FRCRN:
  both stages, :class:`~speechbrain_ext.lobes.models.frcrn.FRCRNStages`);
* ``compute_loss(predictions, noisy, clean)``: the loss, a tensor (``[B]`` or scalar) or a dict
  holding ``loss`` (FRCRN: :class:`~speechbrain_ext.lobes.models.frcrn.FRCRNLoss`;
  any model: :func:`negative_si_snr`);
* ``enhanced_waveform(predictions)`` (only when predictions are not the waveform);
* ``model``: the inference model, ``model(noisy [B, T]) -> [B, T]``, that the test set is
  enhanced with and that is exported (often the module inside ``enhancer``). A model that
  works on whole frames exposes ``win_len`` and ``win_inc``: the input is then zero-padded to
  whole frames, so that every sample comes back.

Authors
 * speechbrain-ext contributors
"""

import logging
import os

import soundfile as sf
import speechbrain as sb
import torch
import torch.nn.functional as F

from speechbrain_ext.evaluation import EvaluationItem, evaluate, format_summary, plot_spectrograms, write_csv
from speechbrain_ext.evaluation.metrics import si_snr
from speechbrain_ext.audio import whole_frames_length
from speechbrain_ext.training.brain import RecipeBrain

logger = logging.getLogger(__name__)


def negative_si_snr(predictions, noisy, clean):
    """``-SI-SNR`` of the enhanced waveform per item, ``[B]``: a loss for any enhancement model.

    Example
    -------
    >>> clean = torch.randn(2, 800)
    >>> bool((negative_si_snr(clean, clean + 1.0, clean) < -50).all())
    True
    """
    del noisy  # the loss of the estimate alone
    return -si_snr(predictions, clean)


class EnhancementBrain(RecipeBrain):
    """Trains any enhancement model defined in the yaml (see the module contract).

    Validation logs the loss, the SI-SNR of the enhanced speech and its improvement over the
    noisy input (``si_snr``, ``si_snr_improvement``).

    Example
    -------
    >>> from speechbrain.dataio.batch import PaddedBatch
    >>> enhancer = torch.nn.Sequential(torch.nn.Unflatten(1, (1, -1)), torch.nn.Conv1d(1, 1, 3, padding=1),
    ...                                torch.nn.Flatten(1))
    >>> brain = EnhancementBrain(modules={"enhancer": enhancer}, hparams={"compute_loss": negative_si_snr})
    >>> batch = PaddedBatch([{"noisy": torch.randn(100), "clean": torch.randn(100)}] * 2)
    >>> brain.on_stage_start(sb.Stage.VALID)
    >>> losses = brain.compute_objectives(brain.compute_forward(batch, sb.Stage.VALID), batch, sb.Stage.VALID)
    >>> losses.shape, len(brain.scores)
    (torch.Size([2]), 2)
    """

    SCORE_NAMES = ("si_snr", "si_snr_improvement")

    def compute_forward(self, batch, stage):
        batch = batch.to(self.device)
        return self.modules.enhancer(batch.noisy.data)

    def enhanced(self, predictions):
        """The enhanced waveform ``[B, T]`` of the predictions."""
        to_waveform = getattr(self.hparams, "enhanced_waveform", None)
        return predictions if to_waveform is None else to_waveform(predictions)

    def compute_objectives(self, predictions, batch, stage):
        noisy, clean = batch.noisy.data, batch.clean.data
        loss = self.hparams.compute_loss(predictions, noisy, clean)
        if isinstance(loss, dict):
            loss = loss["loss"]
        if stage != sb.Stage.TRAIN:
            self.record_scores(si_snr(self.enhanced(predictions).float(), clean), si_snr(noisy, clean))
        return loss


@torch.no_grad()
def enhance_whole(model, noisy, device):
    """Enhance one whole ``[T]`` waveform with ``model`` (``[B, T] -> [B, T]``); a model that
    works on frames (``win_len``, ``win_inc``) gets its input zero-padded to whole frames so
    that every sample comes back.

    Example
    -------
    >>> from speechbrain_ext.lobes.models.frcrn import FRCRN
    >>> enhance_whole(FRCRN(channels=8, fsmn_hidden=8).eval(), torch.randn(16100), "cpu").shape
    torch.Size([16100])
    """
    length = noisy.shape[-1]
    if hasattr(model, "win_len") and hasattr(model, "win_inc"):
        noisy = F.pad(noisy, (0, whole_frames_length(length, model.win_len, model.win_inc) - length))
    return model(noisy[None].to(device))[0, :length].float().cpu()


def evaluate_enhancement(test_sets, hparams, device):
    """Enhance every test set with ``hparams['model']``, write the enhanced files (float WAV, so
    the scores are not quantised) to ``<enhanced_folder>/<name>/``, the per-file and summary
    CSVs (``<output_folder>/test_results_<name>.csv``) and spectrograms; log the averages. Run
    it on the main process only.

    Arguments
    ---------
    test_sets : dict
        Name -> rows with ``ID``, ``noisy_wav`` and ``clean_wav``.
    hparams : dict
        ``model``, ``sample_rate``, ``output_folder``, ``enhanced_folder``, ``train_logger``;
        ``test_dnsmos`` (optional) adds DNSMOS of the enhanced and noisy files to the report.
    device : str
    """
    model = hparams["model"].eval()
    for name, rows in test_sets.items():
        folder = os.path.join(hparams["enhanced_folder"], name)
        os.makedirs(folder, exist_ok=True)
        items = []
        for row in rows:
            noisy, rate = sf.read(row["noisy_wav"], dtype="float32", always_2d=True)
            if rate != hparams["sample_rate"]:
                raise ValueError(f"{row['noisy_wav']} is at {rate} Hz, the model at {hparams['sample_rate']} Hz")
            enhanced = enhance_whole(model, torch.from_numpy(noisy[:, 0].copy()), device)
            path = os.path.join(folder, os.path.basename(row["noisy_wav"]))
            sf.write(path, enhanced.numpy(), rate, subtype="FLOAT")
            items.append(EvaluationItem(row["ID"], row["clean_wav"], path, row["noisy_wav"]))
        result = evaluate(items, "enhancement", dnsmos=hparams.get("test_dnsmos", False))
        write_csv(result, os.path.join(hparams["output_folder"], f"test_results_{name}.csv"))
        plot_spectrograms(items, os.path.join(hparams["output_folder"], f"test_spectrograms_{name}.png"))
        hparams["train_logger"].log_stats(
            stats_meta={"test set": name, "files": len(items)}, test_stats=result.summary["enhanced"]
        )
        logger.info("%s (%d files):\n%s", name, len(items), format_summary(result.summary))

"""Training and test evaluation of speech separation models, whatever the model.

The model contract is SepFormer's (:mod:`speechbrain_ext.lobes.models.masking`): ``encoder``,
``masknet`` and ``decoder`` in the yaml's ``modules``; MossFormer, SpeechBrain's SepFormer or any
other parts with that contract train with :class:`SeparationBrain` as SpeechBrain trains
SepFormer: permutation-invariant SI-SNR (``speechbrain.nnet.losses.get_si_snr_with_pitwrapper``),
the loss threshold and skipped unusable losses of SpeechBrain's recipes (in
:class:`~speechbrain_ext.training.brain.RecipeBrain`), gradient clipping and mixed precision.

- :func:`separation_datasets`: training (cropped, speed-perturbed, noise added or dynamically
  mixed: :class:`~speechbrain_ext.training.mixing.SpeakerMixer`), validation and test datasets
  from mixture manifests (:mod:`speechbrain_ext.training.manifests`);
- :func:`evaluate_separation`: SDR, SDRi, SI-SNR, SI-SNRi of the test set (``test_results.csv``).

Authors
 * speechbrain-ext contributors
"""

import csv
import logging
import os

import soundfile as sf
import speechbrain as sb
import torch
from speechbrain.nnet.losses import get_si_snr_with_pitwrapper

from speechbrain_ext.evaluation import EvaluationResult, format_summary, separation_metrics, summarize, write_csv
from speechbrain_ext.lobes.models.masking import encode_mask_decode
from speechbrain_ext.training.brain import RecipeBrain, read_rows
from speechbrain_ext.training.mixing import SpeakerMixer, SpeakerPool

logger = logging.getLogger(__name__)


def source_keys(num_spks):
    """``['s1_sig', 's2_sig'(, 's3_sig')]``: the dataset keys of the sources."""
    return [f"s{i + 1}_sig" for i in range(num_spks)]


def separation_datasets(hparams, manifests):
    """Training, validation and test datasets (``id``, ``mix_sig``, ``s1_sig``, ``s2_sig`` ...).

    Validation and test items are whole mixtures, as in the manifests. Training items follow
    ``segment_seconds``, ``use_speedperturb`` (``speed_perturb``) and ``dynamic_mixing``
    (sources from ``base_folder_dm``, or the training set's own sources; noise drawn from the
    training rows' ``noise_wav`` files, at ``snr_range_db``; gains in ``dm_relative_gain_db``).

    Returns
    -------
    tuple
        ``(train, valid, test)`` :class:`speechbrain.dataio.dataset.DynamicItemDataset`.

    Raises
    ------
    MixLayoutError
        If dynamic mixing cannot find enough speakers.
    """
    num_spks, sample_rate = hparams["num_spks"], hparams["sample_rate"]
    segment_seconds = hparams.get("segment_seconds")
    segment_samples = int(round(segment_seconds * sample_rate)) if segment_seconds else None
    train_rows = read_rows(manifests["train"])
    dynamic_mixing = bool(hparams.get("dynamic_mixing"))
    pool = None
    if dynamic_mixing:
        folder = hparams.get("base_folder_dm")
        pool = SpeakerPool.from_folder(folder, sample_rate) if folder else SpeakerPool.from_rows(train_rows, num_spks)
        pool.check(num_spks)
        logger.info("Dynamic mixing from %d speakers", len(pool.speakers))
    train_mixer = SpeakerMixer(
        num_spks, sample_rate, segment_samples=segment_samples,
        speed_perturb=hparams["speed_perturb"] if hparams.get("use_speedperturb") else None,
        speaker_pool=pool,
        noise_files=sorted({row["noise_wav"] for row in train_rows if row.get("noise_wav")}),
        snr_range_db=hparams.get("snr_range_db", (-6.0, 3.0)),
        relative_gain_db=hparams.get("dm_relative_gain_db", 2.5),
    )
    eval_mixer = SpeakerMixer(num_spks, sample_rate)
    output_keys = ["id", "mix_sig", *source_keys(num_spks)]

    datasets = []
    for name in ("train", "valid", "test"):
        with open(manifests[name], newline="", encoding="utf-8") as stream:
            columns = [c for c in next(csv.reader(stream)) if c not in ("ID", "duration")]
        dataset = sb.dataio.dataset.DynamicItemDataset.from_csv(csv_path=manifests[name])
        training = name == "train"

        def pipeline(*values, columns=columns, training=training):
            if training and dynamic_mixing:
                mixture, sources = train_mixer.dynamic()
            else:
                mixer = train_mixer if training else eval_mixer
                mixture, sources = mixer.from_row(dict(zip(columns, values)), training=training)
            yield mixture
            yield from sources

        dataset.add_dynamic_item(
            sb.utils.data_pipeline.provides("mix_sig", *source_keys(num_spks))(
                sb.utils.data_pipeline.takes(*columns)(pipeline)
            )
        )
        dataset.set_output_keys(output_keys)
        datasets.append(dataset)
    return tuple(datasets)


def pit_si_snr_loss(targets, estimates, lengths=None):
    """Negative permutation-invariant SI-SNR per item, ``[B]`` (SpeechBrain's
    ``get_si_snr_with_pitwrapper``); items shorter than the batch (``lengths`` in samples) are
    scored on their own samples only, not on the padding.

    Example
    -------
    >>> sources = torch.randn(2, 800, 2)
    >>> loss = pit_si_snr_loss(sources, sources.flip(-1), lengths=torch.tensor([800, 500]))
    >>> bool((loss < -100).all())
    True
    """
    total = targets.shape[1]
    if lengths is None or bool((lengths >= total).all()):
        return get_si_snr_with_pitwrapper(targets, estimates)
    return torch.cat([
        get_si_snr_with_pitwrapper(targets[i : i + 1, :length], estimates[i : i + 1, :length])
        for i, length in enumerate(lengths.tolist())
    ])


class SeparationBrain(RecipeBrain):
    """Trains any encoder / masknet / decoder separator with the permutation-invariant SI-SNR.

    Validation logs the loss, the SI-SNR of the separated sources and its improvement over the
    mixture (``si-snr``, ``si-snr_i``). The loss threshold (``threshold_byloss``,
    ``threshold``), ``loss_upper_lim`` and the skipping of unusable batches are
    :class:`~speechbrain_ext.training.brain.RecipeBrain`'s; the ``lr_scheduler``
    (``ReduceLROnPlateau``) follows the validation loss.

    Example
    -------
    >>> from speechbrain.dataio.batch import PaddedBatch
    >>> from speechbrain_ext.lobes.models.mossformer import MossFormer
    >>> model = MossFormer(in_channels=16, out_channels=16, d_model=16, num_blocks=1, group_size=8, query_key_dim=8)
    >>> brain = SeparationBrain(modules={"encoder": model.encoder, "masknet": model.masknet,
    ...                                  "decoder": model.decoder}, hparams={"num_spks": 2})
    >>> batch = PaddedBatch([{"mix_sig": torch.randn(800), "s1_sig": torch.randn(800), "s2_sig": torch.randn(800)}])
    >>> brain.compute_forward(batch, sb.Stage.VALID).shape
    torch.Size([1, 800, 2])
    """

    SCORE_NAMES = ("si-snr", "si-snr_i")

    @property
    def num_spks(self):
        return self.hparams.num_spks

    def compute_forward(self, batch, stage):
        """Estimated sources ``[B, T, num_spks]`` of the batch's mixtures."""
        batch = batch.to(self.device)
        return encode_mask_decode(self.modules.encoder, self.modules.masknet, self.modules.decoder,
                                  batch.mix_sig.data)

    def targets_and_lengths(self, batch):
        """``([B, T, num_spks] references, [B] lengths in samples)``."""
        targets = torch.stack([getattr(batch, key).data for key in source_keys(self.num_spks)], dim=-1)
        lengths = torch.round(batch.mix_sig.lengths * targets.shape[1]).long()
        return targets.to(self.device), lengths

    def compute_objectives(self, estimates, batch, stage):
        """Negative PIT SI-SNR per item ``[B]``; validation also records SI-SNR and the mixture's."""
        targets, lengths = self.targets_and_lengths(batch)
        losses = pit_si_snr_loss(targets, estimates.float(), lengths)
        if stage != sb.Stage.TRAIN:
            mixture = batch.mix_sig.data.to(self.device).unsqueeze(-1).expand_as(targets)
            self.record_scores(-losses, -pit_si_snr_loss(targets, mixture, lengths))
        return losses


@torch.no_grad()
def evaluate_separation(test_data, hparams, device):
    """Separate every test mixture with the ``encoder``, ``masknet`` and ``decoder`` of ``hparams``, score it
    (:func:`speechbrain_ext.evaluation.separation_metrics`: SDR, SDRi, SI-SNR, SI-SNRi) and write
    ``<output_folder>/test_results.csv``; the first ``n_audio_to_save`` mixtures (all when
    negative or null) and their estimates go to ``<separated_folder>/{mix,s1,s2..}/<id>.wav``
    (float WAV; the estimates in the model's output order). Run it on the main process only.

    Returns
    -------
    list of dict
        The per-mixture rows.
    """
    encoder, masknet, decoder = (hparams[name].eval() for name in ("encoder", "masknet", "decoder"))
    num_spks, sample_rate = hparams["num_spks"], hparams["sample_rate"]
    to_save = hparams.get("n_audio_to_save", 0)
    to_save = len(test_data) if to_save is None or to_save < 0 else to_save
    folder = hparams.get("separated_folder") or os.path.join(hparams["output_folder"], "separated")
    rows = []
    for index in range(len(test_data)):
        item = test_data[index]
        mixture = item["mix_sig"]
        sources = torch.stack([item[key] for key in source_keys(num_spks)])
        estimates = encode_mask_decode(encoder, masknet, decoder, mixture[None].to(device))[0].T.float().cpu()
        metrics = separation_metrics(mixture.numpy(), sources.numpy(), estimates.numpy())
        rows.append({"snt_id": item["id"], **metrics})
        if index < to_save:
            for name, signal in [("mix", mixture), *((f"s{i + 1}", estimates[i]) for i in range(num_spks))]:
                os.makedirs(os.path.join(folder, name), exist_ok=True)
                sf.write(os.path.join(folder, name, f"{item['id']}.wav"), signal.numpy(), sample_rate, subtype="FLOAT")
    summary = summarize(rows, "separation")
    (csv_path,) = write_csv(EvaluationResult(rows, summary), os.path.join(hparams["output_folder"], "test_results.csv"),
                            "separation")
    hparams["train_logger"].log_stats(stats_meta={"test set": "tt", "mixtures": len(rows)},
                                      test_stats=summary["separated"])
    logger.info("Test set (%d mixtures), %s:\n%s", len(rows), csv_path, format_summary(summary, "separation"))
    return rows

"""Manifests of WHAM! (noisy wsj0-2mix) for the MossFormer separation recipe.

Two ways to get the noisy mixtures; the targets are always the clean sources ``s1``, ``s2``:

1. **The generated WHAM! layout** (the WHAM! scripts' output), ``wham_noise_folder`` None::

       <data_folder>/{wav8k,wav16k}/{min,max}/{tr,cv,tt}/{mix_both,mix_clean,mix_single,s1,s2,noise}/<name>.wav

   Rows: ``mix_wav`` (``mix_both``: both speakers and the noise), ``s1_wav``, ``s2_wav``,
   ``noise_wav`` (the noise as it was added, used when speed perturbation remixes the sources).

2. **WHAM! noise added on the fly** to wsj0-2mix: ``data_folder`` is the wsj0-2mix
   ``2speakers`` folder (``{wav8k,wav16k}/{min,max}/{tr,cv,tt}/{mix,s1,s2}``) and
   ``wham_noise_folder`` the WHAM! noise corpus (``wham_noise/{tr,cv,tt}/*.wav``, 16 kHz stereo;
   channel 0 is used). Every mixture gets a noise: the noise file of the same name when there is
   one (as WHAM! pairs them), otherwise one drawn with ``seed``; its start and SNR come from
   ``wham_noise/metadata/mix_param_meta_<split>.csv`` (``noise_samples_beginning_16k``,
   ``target_speaker1_snr_db``) when it has the mixture, otherwise they are drawn with ``seed``
   (SNR uniform in ``snr_range_db``). Rows add ``noise_wav``, ``noise_start`` (in samples of
   the noise file) and ``noise_snr_db``: the noisy mixture is ``s1 + s2 + noise`` scaled to that
   SNR against ``s1``. WHAM! measures that SNR with BS.1770 loudness; here it is a power
   ratio, so levels differ slightly from the released WHAM! mixtures.

Manifests: ``wham_tr.csv``, ``wham_cv.csv``, ``wham_tt.csv`` in ``save_folder``; the options are
stored in ``wham_prepare.json`` and a later call with the same options and files does nothing.
Call it once, under ``run_on_main`` in multi-process runs.

Authors
 * speechbrain-ext contributors
"""

import csv
import glob
import os

import numpy as np
import soundfile as sf

from speechbrain_ext.training.manifests import SPLITS, MixLayoutError, manifest_paths, prepare_mixture_manifests

__all__ = ["MixLayoutError", "prepare_wham"]

METADATA = os.path.join("metadata", "mix_param_meta_{split}.csv")
# Rate of the sample positions in the WHAM! metadata.
METADATA_RATE = 16000


def _noise_files(wham_noise_folder, split):
    folder = os.path.join(wham_noise_folder, split)
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(".wav")) if os.path.isdir(folder) else []
    if not names:
        raise MixLayoutError(
            f"{wham_noise_folder} is not a WHAM! noise folder: expected {{tr,cv,tt}}/*.wav in it "
            f"(no .wav files in {folder})"
        )
    return {name: os.path.join(folder, name) for name in names}


def _metadata(wham_noise_folder, split):
    """``{utterance_id: (start in 16 kHz samples, SNR dB)}`` from the WHAM! metadata ({} if absent)."""
    path = os.path.join(wham_noise_folder, METADATA.format(split=split))
    if not os.path.isfile(path):
        return {}
    with open(path, newline="", encoding="utf-8") as stream:
        rows = list(csv.DictReader(stream))
    needed = {"utterance_id", "noise_samples_beginning_16k", "target_speaker1_snr_db"}
    if rows and not needed <= set(rows[0]):
        raise MixLayoutError(f"{path} lacks the columns {', '.join(sorted(needed - set(rows[0])))}")
    return {
        row["utterance_id"]: (int(float(row["noise_samples_beginning_16k"])), float(row["target_speaker1_snr_db"]))
        for row in rows
    }


def _noise_columns(wham_noise_folder, snr_range_db, seed):
    """``add_columns(split, rows)`` giving every wsj0-2mix row its WHAM! noise (see the module)."""

    def add_columns(split, rows):
        files = _noise_files(wham_noise_folder, split)
        metadata = _metadata(wham_noise_folder, split)
        names = sorted(files)
        rng = np.random.default_rng([seed, list(SPLITS.values()).index(split)])
        for row in rows:
            name = os.path.basename(row["mix_wav"])
            path = files.get(name) or files[names[int(rng.integers(len(names)))]]
            info = sf.info(path)
            if name in metadata:
                start_16k, snr = metadata[name]
                start = int(round(start_16k * info.samplerate / METADATA_RATE))
            else:
                needed = int(np.ceil(float(row["duration"]) * info.samplerate))
                start = int(rng.integers(0, max(1, info.frames - needed + 1)))
                snr = float(rng.uniform(*snr_range_db))
            row.update(noise_wav=path, noise_start=start, noise_snr_db=f"{snr:.4f}")

    return add_columns


def prepare_wham(
    data_folder,
    save_folder,
    sample_rate=8000,
    mode="min",
    wham_noise_folder=None,
    snr_range_db=(-6.0, 3.0),
    seed=1234,
    skip_prep=False,
):
    """Write (or find up to date) the WHAM! manifests; see the module description.

    Arguments
    ---------
    data_folder : str
        The generated WHAM! folder (``wav8k/...`` with ``mix_both``), or, with
        ``wham_noise_folder``, the wsj0-2mix ``2speakers`` folder.
    save_folder : str
        Where the manifests go.
    sample_rate : int
        8000 or 16000.
    mode : str
        ``min`` or ``max``.
    wham_noise_folder : str, optional
        The WHAM! noise corpus: noise is then added on the fly to the wsj0-2mix sources.
    snr_range_db : tuple of float
        SNR range (against speaker 1) for mixtures the metadata does not cover.
    seed : int
        Seed of the noise choices that the metadata does not fix.
    skip_prep : bool
        Return the manifest paths without looking at the data.

    Returns
    -------
    dict
        ``{'train', 'valid', 'test'}`` -> path of ``wham_tr.csv``, ``wham_cv.csv``, ``wham_tt.csv``.

    Raises
    ------
    MixLayoutError
        If a folder is not the expected layout or its files cannot be used.
    """
    if skip_prep:
        return manifest_paths(save_folder, "wham")
    if not wham_noise_folder:
        try:
            return prepare_mixture_manifests(
                data_folder, save_folder, prefix="wham", dataset="WHAM!", num_spks=2, sample_rate=sample_rate,
                mode=mode, mixture_folder="mix_both", extra_folders={"noise": "noise_wav"},
            )
        except MixLayoutError as error:
            wsj0mix = glob.glob(os.path.join(data_folder, "wav*k", "*", "tr", "mix"))
            if wsj0mix:  # a wsj0-2mix folder: the noise must come from the WHAM! noise corpus
                raise MixLayoutError(
                    f"{error}. It looks like wsj0-2mix: to add WHAM! noise on the fly, also pass "
                    "--wham_noise_folder /path/to/wham_noise"
                ) from None
            raise
    counts = {f"wham_noise/{split}": len(_noise_files(wham_noise_folder, split)) for split in SPLITS.values()}
    counts.update({
        f"wham_noise/metadata/{split}": len(_metadata(wham_noise_folder, split)) for split in SPLITS.values()
    })
    return prepare_mixture_manifests(
        data_folder, save_folder, prefix="wham", dataset="wsj0-2mix (for WHAM! noise on the fly)", num_spks=2,
        sample_rate=sample_rate, mode=mode, mixture_folder="mix",
        add_columns=_noise_columns(wham_noise_folder, snr_range_db, seed),
        extra_options={
            "wham_noise_folder": os.path.abspath(wham_noise_folder),
            "snr_range_db": [float(v) for v in snr_range_db],
            "seed": int(seed),
        },
        extra_counts=counts,
    )

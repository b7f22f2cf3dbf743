"""Manifests of wsj0-2mix / wsj0-3mix for the MossFormer separation recipe.

Reads the layout the wsj0-mix scripts (``create_wav_2speakers.m`` / ``create_wav_3speakers.m``)
write::

    <data_folder>/{wav8k,wav16k}/{min,max}/{tr,cv,tt}/{mix,s1,s2[,s3]}/<same file name>.wav

and writes SpeechBrain CSV manifests ``wsj_tr.csv``, ``wsj_cv.csv``, ``wsj_tt.csv`` into
``save_folder``, as SpeechBrain's ``prepare_wsjmix`` does: one row per mixture with ``ID`` (the
file name without extension), ``duration`` (seconds), ``mix_wav``, ``s1_wav``, ``s2_wav`` (and
``s3_wav``), absolute paths. ``sample_rate`` picks ``wav8k`` or ``wav16k``, ``mode`` ``min`` or
``max``. The options are stored in ``wsj_prepare.json``: a later call with the same options and
files does nothing. Call it once, under ``run_on_main`` in multi-process runs.

Authors
 * speechbrain-ext contributors
"""

from speechbrain_ext.training.manifests import MixLayoutError, manifest_paths, prepare_mixture_manifests

__all__ = ["MixLayoutError", "prepare_wsjmix"]


def prepare_wsjmix(data_folder, save_folder, num_spks=2, sample_rate=8000, mode="min", skip_prep=False):
    """Write (or find up to date) the wsj0-2mix / wsj0-3mix manifests.

    Arguments
    ---------
    data_folder : str
        The ``2speakers`` (or ``3speakers``) folder holding ``wav8k/`` and/or ``wav16k/``; its
        ``wav8k/min`` folder is accepted too.
    save_folder : str
        Where the manifests go.
    num_spks : int
        2 (wsj0-2mix) or 3 (wsj0-3mix).
    sample_rate : int
        8000 or 16000.
    mode : str
        ``min`` (mixtures as long as the shorter utterance) or ``max``.
    skip_prep : bool
        Return the manifest paths without looking at the data.

    Returns
    -------
    dict
        ``{'train', 'valid', 'test'}`` -> path of ``wsj_tr.csv``, ``wsj_cv.csv``, ``wsj_tt.csv``.

    Raises
    ------
    MixLayoutError
        If ``data_folder`` is not that layout (the message says what was expected and found),
        files are missing, at another rate, or the number of speakers does not match.
    """
    if skip_prep:
        return manifest_paths(save_folder, "wsj")
    return prepare_mixture_manifests(
        data_folder,
        save_folder,
        prefix="wsj",
        dataset=f"wsj0-{num_spks}mix",
        num_spks=num_spks,
        sample_rate=sample_rate,
        mode=mode,
        mixture_folder="mix",
    )

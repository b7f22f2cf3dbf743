"""Where pretrained models come from: SpeechBrain-format sources and the official repositories.

``from_hparams(source=...)`` accepts, besides everything SpeechBrain accepts (a local model
folder or a Hugging Face repo holding ``hyperparams.yaml`` and checkpoints):

- the official repositories by id: ``alibabasglab/FRCRN_SE_16K``,
  ``alibabasglab/MossFormer2_SS_16K``, ``alibabasglab/MossFormer2_SE_48K`` and
  ``alibabasglab/MossFormerGAN_SE_16K`` (Hugging Face, ClearerVoice-Studio layout) and the
  ModelScope ids of FRCRN and MossFormer (through the ``modelscope`` hub client);
- a local folder holding an official checkpoint (ModelScope or ClearerVoice layout).

Official weights carry no SpeechBrain yaml: the package ships the model card
(``speechbrain_ext/pretrained/<card>/hyperparams.yaml``, also at the repository's top-level
``pretrained/``) and converts the checkpoint on load.

Authors: speechbrain-ext contributors
"""

import os
from dataclasses import dataclass

from hyperpyyaml import load_hyperpyyaml
from speechbrain_ext.errors import SpeechBrainExtError

CARDS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pretrained")


@dataclass(frozen=True)
class OfficialRepo:
    """An official model repository: which hub serves it and which card describes it."""

    hub: str  # "huggingface" (ClearerVoice-Studio layout) or "modelscope"
    card: str


OFFICIAL_REPOS = {
    "alibabasglab/FRCRN_SE_16K": OfficialRepo("huggingface", "frcrn-16k"),
    "damo/speech_frcrn_ans_cirm_16k": OfficialRepo("modelscope", "frcrn-16k"),
    "iic/speech_frcrn_ans_cirm_16k": OfficialRepo("modelscope", "frcrn-16k"),
    "damo/speech_mossformer_separation_temporal_8k": OfficialRepo("modelscope", "mossformer-8k"),
    "iic/speech_mossformer_separation_temporal_8k": OfficialRepo("modelscope", "mossformer-8k"),
    "alibabasglab/MossFormer2_SS_16K": OfficialRepo("huggingface", "mossformer2-ss-16k"),
    "alibabasglab/MossFormer2_SE_48K": OfficialRepo("huggingface", "mossformer2-se-48k"),
    "alibabasglab/MossFormerGAN_SE_16K": OfficialRepo("huggingface", "mossformergan-se-16k"),
}

# Files that mark a folder as holding official (not SpeechBrain-format) weights.
_OFFICIAL_MARKERS = ("pytorch_model.bin", "last_best_checkpoint", "masknet.bin")


class SourceError(SpeechBrainExtError, ValueError):
    """A model source that cannot be used; the message says why and what to do."""


def card_path(card, filename="hyperparams.yaml"):
    """Path of a file of a model card shipped with the package.

    Example
    -------
    >>> os.path.exists(card_path("frcrn-16k"))
    True
    """
    return os.path.join(CARDS_DIR, card, filename)


def is_official_folder(path):
    """True for a local folder with an official checkpoint and no SpeechBrain ``hyperparams.yaml``."""
    return (
        os.path.isdir(path)
        and not os.path.exists(os.path.join(path, "hyperparams.yaml"))
        and any(os.path.exists(os.path.join(path, marker)) for marker in _OFFICIAL_MARKERS)
    )


def download_official(repo_id, revision=None):
    """Local folder with the files of an official repository (downloaded or from the hub cache).

    Hugging Face downloads go through ``huggingface_hub`` (its cache and ``HF_HUB_OFFLINE``
    apply); ModelScope downloads need the ``modelscope`` package.
    """
    repo = OFFICIAL_REPOS[repo_id]
    if repo.hub == "huggingface":
        from huggingface_hub import hf_hub_download

        # ClearerVoice-Studio: a text file names the checkpoint to use.
        pointer = hf_hub_download(repo_id, "last_best_checkpoint", revision=revision)
        with open(pointer, encoding="utf-8") as stream:
            checkpoint_name = stream.readline().strip()
        checkpoint = hf_hub_download(repo_id, checkpoint_name, revision=revision)
        return os.path.dirname(checkpoint)
    try:
        from modelscope.hub.snapshot_download import snapshot_download
    except ImportError:
        raise SourceError(
            f"{repo_id} is hosted on ModelScope: install its hub client (`pip install modelscope`) "
            "to download it, or pass a local folder holding the downloaded files"
        ) from None
    try:  # the local cache first: no network access when the files are already there
        return snapshot_download(repo_id, revision=revision, local_files_only=True)
    except Exception:
        pass
    try:
        return snapshot_download(repo_id, revision=revision)
    except Exception as error:
        raise SourceError(f"could not download {repo_id} from ModelScope: {str(error).splitlines()[0]}") from None


def official_folder(source, cards, revision=None):
    """Resolve ``source`` to ``(local folder of official weights, card)``, or None.

    ``cards`` are the cards the caller loads; for a local folder the card is left to the caller
    (None). None means "a SpeechBrain-format source": let SpeechBrain's own loading handle it.
    """
    source = os.fspath(source)
    if is_official_folder(source):
        return source, None
    repo = OFFICIAL_REPOS.get(source)
    if repo is None:
        return None
    if repo.card not in cards:
        raise SourceError(f"{source} holds a {repo.card} model, not a {' or '.join(cards)} one")
    return download_official(source, revision), repo.card


class OfficialSourceMixin:
    """Adds official sources to ``Pretrained.from_hparams``.

    Subclasses set ``CARDS`` (the shipped cards' folder names, of the models they load) and
    implement ``_folder_card(folder)``, which names the card of a local folder of official
    weights, and ``_load_official(hparams, folder)``, which returns the modules filled from the
    official files in ``folder``, sized by the folder's ``configuration.json`` when it has one
    (the card's official sizes otherwise), and may update ``hparams`` (e.g. ``num_spks``).
    """

    CARDS = ()

    @classmethod
    def _folder_card(cls, folder):
        return cls.CARDS[0]

    @classmethod
    def from_hparams(cls, source, hparams_file="hyperparams.yaml", revision=None, overrides=None, **kwargs):
        """Load from a SpeechBrain-format source or an official repository/folder.

        Arguments
        ---------
        source : str
            Local folder, Hugging Face repo id, or official repo id (see module docstring).
        hparams_file : str
            Name of the yaml of SpeechBrain-format sources.
        revision : str, optional
            Pin a Hub revision (branch, tag or commit) for Hugging Face and ModelScope sources.
        overrides : dict, optional
            HyperPyYAML overrides of the hparams (e.g. ``{"normalize": False}``).
        **kwargs
            Passed on to ``Pretrained.from_hparams`` / the constructor (``run_opts``, ``savedir``...).
        """
        if not cls.CARDS and (is_official_folder(os.fspath(source)) or os.fspath(source) in OFFICIAL_REPOS):
            raise SourceError(f"{cls.__name__} loads SpeechBrain-format sources only: load {source} with the "
                              "interface of its model (EnhanceFRCRN, EnhanceMossFormer2, EnhanceMossFormerGAN or SeparateMossFormer)")
        official = official_folder(source, cls.CARDS, revision)
        if official is None:
            if revision is not None:
                from speechbrain.utils.fetching import FetchConfig

                kwargs["fetch_config"] = FetchConfig(revision=revision, allow_updates=True)
            return super().from_hparams(source, hparams_file=hparams_file, overrides=overrides or {}, **kwargs)
        folder, card = official
        card = card or cls._folder_card(folder)
        with open(card_path(card), encoding="utf-8") as stream:
            hparams = load_hyperpyyaml(stream, overrides or {})
        modules = cls._load_official(hparams, folder)
        hparams.update(modules)
        hparams["modules"] = modules
        return cls(modules=modules, hparams=hparams, run_opts=kwargs.get("run_opts"),
                   freeze_params=kwargs.get("freeze_params", True))

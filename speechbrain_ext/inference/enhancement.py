"""Ready-to-use FRCRN (16 kHz), MossFormer2 (48 kHz) and MossFormerGAN (16 kHz) speech enhancement.

Authors: speechbrain-ext contributors
"""

import inspect
import os
import re

import torch
import torch.nn.functional as F
from speechbrain.inference.interfaces import Pretrained

from speechbrain_ext.audio import (
    AtomicAudioWriter,
    AudioInputError,
    AudioReader,
    StreamResampler,
    level_scale,
    whole_frames_length,
)
from speechbrain_ext.errors import SpeechBrainExtError
from speechbrain_ext.inference.chunking import chunk_lengths, chunked_inference
from speechbrain_ext.inference.options import (
    absolute_lengths,
    as_waveform_batch,
    check_batch_size,
    check_channels,
    check_chunking,
    check_output_rate,
)
from speechbrain_ext.inference.onnx import OnnxLoadMixin
from speechbrain_ext.inference.sources import OfficialSourceMixin


class WaveformEnhancer(OnnxLoadMixin, OfficialSourceMixin, Pretrained):
    """A ready-to-use waveform-to-waveform enhancer, in the style of ``SpectralMaskEnhancement``.

    The model (``modules["model"]``) maps ``[B, T]`` noisy waveforms to ``[B, T]``, analyses
    frames of ``win_len`` samples every ``win_inc`` and may have ``fuse_for_inference()``:
    :class:`EnhanceFRCRN` and :class:`EnhanceMossFormer2` are this interface with their
    official sources. Files of any length, rate and channel count are processed in bounded
    memory (overlapping chunks, cross-faded), written atomically, at any output rate.

    ``hparams.normalize`` brings input to the level the official FRCRN was trained at and
    scales the output back to the input's level (default: ``DEFAULT_NORMALIZE`` of the class).

    Example
    -------
    >>> class Halve(torch.nn.Module):  # any [B, T] -> [B, T] model analysing 100-sample frames
    ...     win_len, win_inc = 100, 50
    ...     def forward(self, noisy):
    ...         return noisy / 2
    >>> enhancer = WaveformEnhancer(modules={"model": Halve()}, hparams={"sample_rate": 16000, "normalize": False})
    >>> enhancer.enhance_batch(torch.ones(1, 420)).unique()
    tensor([0.5000])
    """

    MODULES_NEEDED = ["model"]
    HPARAMS_NEEDED = ["sample_rate"]
    #: Named in errors.
    MODEL_NAME = "model"
    #: Level normalisation when the hparams do not say (the official FRCRN pipeline's).
    DEFAULT_NORMALIZE = True
    #: Chunk length of long files when the hparams name no ``chunk_seconds``.
    DEFAULT_CHUNK_SECONDS = 10.0

    def __init__(self, *args, freeze_params=True, **kwargs):
        super().__init__(*args, freeze_params=freeze_params, **kwargs)
        if freeze_params and hasattr(self.mods.model, "fuse_for_inference"):  # inference only
            self.mods.model.fuse_for_inference()  # the fused kernels compute the same, faster

    @property
    def sample_rate(self):
        return self.hparams.sample_rate

    @property
    def normalize(self):
        return getattr(self.hparams, "normalize", self.DEFAULT_NORMALIZE)

    def _model_length(self, length):
        """Smallest length >= ``length`` made of whole frames (the model drops a partial frame)."""
        model = self.mods.model
        if length < model.win_len:
            raise AudioInputError(
                f"input of {length} samples is shorter than one {self.MODEL_NAME} frame ({model.win_len} samples, "
                f"{1000 * model.win_len / self.sample_rate:.0f} ms at {self.sample_rate} Hz)"
            )
        return whole_frames_length(length, model.win_len, model.win_inc)

    def _enhance_equal(self, noisy, scale=None):
        """Enhance items of equal length ``[B, T]``; ``scale`` per item (default: level-based)."""
        if not torch.isfinite(noisy).all():
            raise AudioInputError("input holds NaN or infinite samples")
        if scale is None:
            scale = level_scale([noisy]) if self.normalize else noisy.new_ones(len(noisy))
        scale = scale.to(noisy).view(-1, 1)
        length = noisy.shape[-1]
        padded = F.pad(noisy * scale, (0, self._model_length(length) - length))
        with torch.no_grad():
            enhanced = self.mods.model(padded.to(self.device))[:, :length]
        return enhanced / scale.to(enhanced.device)

    def _enhance_items(self, signals, scales):
        """Enhance 1-D signals of any lengths (scaled by ``scales``, ``[N]``) in as few passes as
        the model allows; each output is the one :meth:`_enhance_equal` gives the signal alone.

        A model whose forward takes ``lengths`` (FRCRN) runs them all in one padded batch; any
        other runs each group of signals that pad to the same model length together.
        """
        lengths = [self._model_length(signal.shape[-1]) for signal in signals]
        for signal in signals:
            if not torch.isfinite(signal).all():
                raise AudioInputError("input holds NaN or infinite samples")
        takes_lengths = "lengths" in inspect.signature(self.mods.model.forward).parameters
        groups = {}
        for index, length in enumerate(lengths):
            groups.setdefault(0 if takes_lengths else length, []).append(index)
        outputs = [None] * len(signals)
        for members in groups.values():
            batch = torch.zeros(len(members), max(lengths[i] for i in members))
            for row, index in enumerate(members):
                batch[row, : signals[index].shape[-1]] = signals[index] * scales[index]
            extra = {}
            if takes_lengths and len({lengths[i] for i in members}) > 1:
                extra["lengths"] = torch.tensor([lengths[i] for i in members])
            with torch.no_grad():
                enhanced = self.mods.model(batch.to(self.device), **extra).cpu()
            for row, index in enumerate(members):
                outputs[index] = enhanced[row, : signals[index].shape[-1]] / scales[index]
        return outputs

    def enhance_batch(self, noisy, lengths=None):
        """Enhance a batch of noisy waveforms.

        Arguments
        ---------
        noisy : torch.Tensor, numpy array or list
            ``[B, T]`` (or ``[T]``) waveforms at the model's sample rate, float or integer PCM.
        lengths : torch.Tensor, numpy array or list, optional
            ``B`` relative lengths in [0, 1] as in SpeechBrain (anything else is refused); padded
            items are enhanced exactly as if they were alone, and their padding comes back as
            zeros. FRCRN runs them in one batch, each item's frames kept apart from the padding
            (its gates pool over the whole utterance); models without a ``lengths`` argument run
            items of different lengths separately.

        Returns
        -------
        torch.Tensor
            ``[B, T]`` enhanced waveforms, on the model's device.
        """
        noisy, single = as_waveform_batch(noisy)
        sizes = absolute_lengths(noisy, lengths)
        if all(size == noisy.shape[-1] for size in sizes):
            enhanced = self._enhance_equal(noisy)
        else:
            items = [noisy[index, :size] for index, size in enumerate(sizes)]
            scales = [level_scale([item[None]])[0] if self.normalize else 1.0 for item in items]
            enhanced = torch.zeros(noisy.shape, device=self.device)
            for index, item in enumerate(self._enhance_items(items, scales)):
                enhanced[index, : sizes[index]] = item
        return enhanced[0] if single else enhanced

    def _file_scale(self, reader):
        """Per-channel level gain over a whole file (two streaming passes; or ``[signal]``)."""
        return level_scale(reader) if self.normalize else torch.ones(reader.num_channels)

    def enhance_file(self, filename, output_filename=None, chunk_seconds="auto", overlap_seconds=None,
                     batch_size=1, channels="mix", output_rate=None, subtype="PCM_16"):
        """Enhance an audio file of any length, sample rate and channel count.

        Arguments
        ---------
        filename : str
            Input audio file.
        output_filename : str, optional
            Where to write the result (never the input file itself). The file is written block
            by block to a temporary name and renamed when complete, so memory stays bounded and
            no partial file is left.
        chunk_seconds : float, None or "auto"
            Length of the chunks the model sees (``None``: the whole file at once; ``"auto"``:
            the hparams' ``chunk_seconds``, else the class's ``DEFAULT_CHUNK_SECONDS``: 10 s for
            FRCRN and MossFormer2, which keeps peak memory at about what a 10 s file needs
            (~1.5 GB on CPU for the official FRCRN) with plenty of utterance context; 4 s for
            MossFormerGAN, whose attention is quadratic in the chunk length).
        overlap_seconds : float, optional
            Overlap of consecutive chunks, cross-faded (default: 1 s, at most a quarter chunk).
        batch_size : int
            Chunks per forward pass.
        channels : str or int
            ``'mix'`` (default: average the channels), ``'all'`` (enhance each channel), or an index.
        output_rate : int, optional
            Sample rate of the output; the model's by default, ``'input'`` for the input's.
        subtype : str
            Output sample format: ``'PCM_16'`` (clipped to full scale, never wrapped) or ``'FLOAT'``.

        Returns
        -------
        torch.Tensor or dict
            Without ``output_filename``: the enhanced waveform ``[T]`` (``[C, T]`` for ``'all'``).
            With it: ``{"path", "seconds", "sample_rate", "clipped_samples"}``.
        """
        if isinstance(chunk_seconds, str) and chunk_seconds == "auto":
            chunk_seconds = getattr(self.hparams, "chunk_seconds", self.DEFAULT_CHUNK_SECONDS)
        chunk_seconds, overlap_seconds = check_chunking(chunk_seconds, overlap_seconds)
        batch_size, channels = check_batch_size(batch_size), check_channels(channels)
        output_rate = check_output_rate(output_rate)
        reader = AudioReader(filename, self.sample_rate, channels)
        self._model_length(reader.num_samples)  # rejects inputs shorter than one frame early
        scale = self._file_scale(reader)
        channel_scale = scale.repeat(max(1, batch_size))

        def process(batch):  # [chunks * channels, L], channel-major within each chunk
            return self._enhance_equal(batch, channel_scale[: len(batch)]).cpu()

        chunk, overlap = chunk_lengths(chunk_seconds, overlap_seconds, 1.0, self.sample_rate)
        guard = self.mods.model.win_len
        blocks = chunked_inference(iter(reader), reader.num_samples, process, chunk, overlap, batch_size, guard)
        if output_filename is None:
            enhanced = torch.cat(list(blocks), dim=1)
            return enhanced[0] if channels != "all" else enhanced

        return self._write(output_filename, blocks, reader, output_rate, subtype)

    def _write(self, output_filename, blocks, reader, output_rate, subtype):
        """Write enhanced ``blocks`` (model rate) of ``reader``'s file; returns enhance_file's dict."""
        rate = reader.sample_rate if output_rate == "input" else (output_rate or self.sample_rate)
        resampler = StreamResampler(self.sample_rate, rate)
        with AtomicAudioWriter(output_filename, rate, reader.num_channels, subtype, source=reader.path) as writer:
            for block in blocks:
                writer.write(resampler.push(block).T)
            writer.write(resampler.flush().T)
        return {
            "path": os.fspath(output_filename),
            "seconds": reader.num_samples / self.sample_rate,
            "sample_rate": rate,
            "clipped_samples": writer.clipped,
        }

    def enhance_files(self, filenames, output_filenames, channels="mix", output_rate=None, subtype="PCM_16"):
        """Enhance several short files in one batch (for corpora of many short files).

        Each file is read whole and enhanced in one pass, as :meth:`enhance_file` enhances a file
        no longer than its chunks (so keep the files short); the files (or their channels) run
        together in as few forward passes as the model allows (see :meth:`enhance_batch`), and
        each output equals :meth:`enhance_file`'s within float rounding.

        Arguments
        ---------
        filenames, output_filenames : list of str
            Inputs and where to write each (atomically, as :meth:`enhance_file`).
        channels, output_rate, subtype
            As for :meth:`enhance_file`.

        Returns
        -------
        list
            For each file, :meth:`enhance_file`'s result dict, or the exception that stopped it
            (a bad file does not stop the others).

        Example
        -------
        >>> import tempfile, soundfile
        >>> from speechbrain_ext.lobes.models.frcrn import FRCRN
        >>> enhancer = EnhanceFRCRN(modules={"model": FRCRN(channels=8, fsmn_hidden=8)}, hparams={"sample_rate": 16000})
        >>> folder = tempfile.mkdtemp()
        >>> names = [os.path.join(folder, f"{n}.wav") for n in ("a", "b", "c")]
        >>> soundfile.write(names[0], 0.1 * torch.randn(16000).numpy(), 16000)
        >>> soundfile.write(names[1], 0.1 * torch.randn(12345).numpy(), 16000)
        >>> soundfile.write(names[2], torch.zeros(10).numpy(), 16000)  # shorter than one frame
        >>> results = enhancer.enhance_files(names, [n + ".out.wav" for n in names])
        >>> [r["seconds"] if isinstance(r, dict) else type(r).__name__ for r in results]
        [1.0, 0.7715625, 'AudioInputError']
        """
        channels, output_rate = check_channels(channels), check_output_rate(output_rate)
        results, readers, signals, scales, owners = [], [], [], [], []
        for index, filename in enumerate(filenames):
            try:
                reader = AudioReader(filename, self.sample_rate, channels)
                self._model_length(reader.num_samples)
                signal = torch.cat(list(reader), dim=1)
                scale = self._file_scale([signal])
            except (SpeechBrainExtError, OSError) as error:
                results.append(error)
                readers.append(None)
                continue
            results.append(None)
            readers.append(reader)
            for channel in range(len(signal)):
                signals.append(signal[channel])
                scales.append(scale[channel])
                owners.append(index)
        enhanced = self._enhance_items(signals, scales) if signals else []
        for index, reader in enumerate(readers):
            if reader is None:
                continue
            block = torch.stack([out for out, owner in zip(enhanced, owners) if owner == index])
            try:
                results[index] = self._write(output_filenames[index], [block], reader, output_rate, subtype)
            except (SpeechBrainExtError, OSError) as error:
                results[index] = error
        return results

    def forward(self, noisy, lengths=None):
        """Enhance a batch (see :meth:`enhance_batch`)."""
        return self.enhance_batch(noisy, lengths)


class EnhanceFRCRN(WaveformEnhancer):
    """A ready-to-use FRCRN noise suppressor (16 kHz), in the style of ``SpectralMaskEnhancement``.

    Load it from a SpeechBrain-format model directory or Hugging Face repo, or straight from the
    official weights (``alibabasglab/FRCRN_SE_16K`` on Hugging Face, the ModelScope ids
    ``damo/speech_frcrn_ans_cirm_16k`` / ``iic/speech_frcrn_ans_cirm_16k``, or a local folder
    holding an official checkpoint), which are converted on load.

    Input is brought to the level the official model was trained at (as the official pipeline
    does) and the output is scaled back to the input's level; set ``normalize=False`` in the
    hparams (or the attribute) to feed the model as is.

    Example
    -------
    >>> from speechbrain_ext.lobes.models.frcrn import FRCRN
    >>> model = FRCRN(channels=8, fsmn_hidden=8)
    >>> enhancer = EnhanceFRCRN(modules={"model": model}, hparams={"sample_rate": 16000})
    >>> enhancer.enhance_batch(torch.randn(2, 16000) * 0.1).shape
    torch.Size([2, 16000])
    """

    CARDS = ("frcrn-16k",)
    MODEL_NAME = "FRCRN"

    @classmethod
    def _load_official(cls, hparams, folder):
        from speechbrain_ext.convert import load_frcrn_official, read_official_configuration
        from speechbrain_ext.lobes.models.frcrn import FRCRN

        sizes = read_official_configuration(os.path.join(folder, "configuration.json"), FRCRN)
        model = FRCRN(**{**hparams["model"].config, **sizes}) if sizes else hparams["model"]
        return {"model": load_frcrn_official(model, folder)}


class EnhanceMossFormer2(WaveformEnhancer):
    """A ready-to-use MossFormer2 fullband enhancer (48 kHz), in the style of ``SpectralMaskEnhancement``.

    Load it from a SpeechBrain-format folder or Hugging Face repo, from the official
    ClearerVoice-Studio repo ``alibabasglab/MossFormer2_SE_48K`` (Hugging Face), or from a local
    folder of official weights (``last_best_checkpoint`` and the checkpoint it names). Everything
    else is :class:`WaveformEnhancer`'s: any input rate is resampled to 48 kHz, long files are
    enhanced in cross-faded chunks (10 s by default; ClearVoice decodes 4 s windows beyond 20 s).
    The input level is kept (``normalize: False`` in the card), as the official pipeline does.

    Example
    -------
    >>> from speechbrain_ext.lobes.models.mossformer2_se import MossFormer2SE
    >>> model = MossFormer2SE(d_model=32, num_blocks=1, group_size=16, query_key_dim=16, fsmn_channels=16)
    >>> enhancer = EnhanceMossFormer2(modules={"model": model}, hparams={"sample_rate": 48000, "normalize": False})
    >>> enhancer.enhance_batch(0.1 * torch.randn(2, 9600)).shape
    torch.Size([2, 9600])
    """

    CARDS = ("mossformer2-se-48k",)
    MODEL_NAME = "MossFormer2"
    DEFAULT_NORMALIZE = False  # ClearVoice feeds the model the input's own level

    @classmethod
    def _load_official(cls, hparams, folder):
        from speechbrain_ext.convert import (
            load_mossformer2_se_official,
            mossformer2_se_from_official,
            read_official_configuration,
        )

        configuration = read_official_configuration(os.path.join(folder, "configuration.json"))
        rate = configuration.get("sample_rate")
        if isinstance(rate, (int, float)) and rate > 0:
            hparams["sample_rate"] = int(rate)
        if configuration:  # a folder we wrote: sized by its configuration.json
            return {"model": mossformer2_se_from_official(folder)}
        return {"model": load_mossformer2_se_official(hparams["model"], folder)}  # the card's model


class EnhanceMossFormerGAN(WaveformEnhancer):
    """A ready-to-use MossFormerGAN enhancer (16 kHz), in the style of ``SpectralMaskEnhancement``.

    Load it from a SpeechBrain-format folder or Hugging Face repo, from the official
    ClearerVoice-Studio repo ``alibabasglab/MossFormerGAN_SE_16K`` (Hugging Face), or from a local
    folder of official weights. The model scales each input to unit mean power itself (and back),
    as ClearVoice does, so no level normalisation is added here. Its attention over frames grows
    with the square of the chunk length: long files are enhanced in 4 s chunks, cross-faded over
    1 s (ClearVoice cuts 10 s windows).

    Example
    -------
    >>> from speechbrain_ext.lobes.models.mossformer_gan import MossFormerGANSE
    >>> model = MossFormerGANSE(channels=16, num_blocks=1, hidden_channels=32, query_key_dim=16, qk_channels=3)
    >>> enhancer = EnhanceMossFormerGAN(modules={"model": model}, hparams={"sample_rate": 16000})
    >>> enhancer.enhance_batch(0.1 * torch.randn(2, 1600)).shape
    torch.Size([2, 1600])
    """

    CARDS = ("mossformergan-se-16k",)
    MODEL_NAME = "MossFormerGAN"
    DEFAULT_NORMALIZE = False  # the model normalises its input power itself
    # Its attention over frames is quadratic: 4 s chunks (1 s cross-fades) run faster per second
    # of audio than 10 s ones (about RTF 5.5 against 9 on 2 CPU threads, estimated from single
    # 4 s and 10 s passes) in less than half the memory.
    DEFAULT_CHUNK_SECONDS = 4.0

    @classmethod
    def _load_official(cls, hparams, folder):
        from speechbrain_ext.convert import (
            load_mossformer_gan_official,
            mossformer_gan_from_official,
            read_official_configuration,
        )

        if read_official_configuration(os.path.join(folder, "configuration.json")):  # a folder we wrote
            return {"model": mossformer_gan_from_official(folder)}
        return {"model": load_mossformer_gan_official(hparams["model"], folder)}  # the card's model


#: The enhancement interface of each model class named in a SpeechBrain card, and the first tensor
#: name prefix of each model's official (ClearerVoice-Studio) checkpoint.
_ENHANCERS = {"MossFormer2SE": ("EnhanceMossFormer2", "mossformer."),
              "MossFormerGANSE": ("EnhanceMossFormerGAN", "dense_encoder.")}


def enhancer_for(source):
    """The enhancement interface that loads ``source``: :class:`EnhanceMossFormer2` /
    :class:`EnhanceMossFormerGAN` for their models' sources (the official repo id, a folder of its
    weights, or a local SpeechBrain-format folder), :class:`EnhanceFRCRN` otherwise (a Hugging
    Face repo in SpeechBrain format is not downloaded to look: load it with the class itself).

    Example
    -------
    >>> enhancer_for("alibabasglab/MossFormer2_SE_48K").__name__
    'EnhanceMossFormer2'
    """
    from speechbrain_ext.inference.sources import OFFICIAL_REPOS, is_official_folder

    source = os.fspath(source)
    interfaces = {"EnhanceFRCRN": EnhanceFRCRN, "EnhanceMossFormer2": EnhanceMossFormer2,
                  "EnhanceMossFormerGAN": EnhanceMossFormerGAN}
    repo = OFFICIAL_REPOS.get(source)
    if repo is not None:
        return next((c for c in interfaces.values() if repo.card in c.CARDS), EnhanceFRCRN)
    yaml_file = os.path.join(source, "hyperparams.yaml")
    if os.path.isfile(yaml_file):
        with open(yaml_file, encoding="utf-8") as stream:
            model_class = re.search(r"^model:\s*!new:\S*?\.?(\w+)\s*$", stream.read(), re.MULTILINE)
        return interfaces[_ENHANCERS.get(model_class and model_class.group(1), ("EnhanceFRCRN",))[0]]
    if is_official_folder(source):
        from speechbrain_ext.convert import named_checkpoint_names

        names = named_checkpoint_names(source)  # []: a ModelScope (FRCRN) folder
        for interface, prefix in _ENHANCERS.values():
            if any(name.startswith(prefix) for name in names):
                return interfaces[interface]
    return EnhanceFRCRN

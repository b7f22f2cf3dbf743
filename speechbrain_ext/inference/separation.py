"""Ready-to-use MossFormer and MossFormer2 speech separation.

Authors: speechbrain-ext contributors
"""

import contextlib
import itertools
import os

import numpy as np
import soundfile as sf
import torch
from speechbrain.inference.interfaces import Pretrained

from speechbrain_ext.audio import AtomicAudioWriter, AudioInputError, AudioReader, StreamResampler
from speechbrain_ext.inference.chunking import chunk_lengths, chunked_inference
from speechbrain_ext.inference.options import (
    as_waveform_batch,
    check_batch_size,
    check_channels,
    check_chunking,
    check_output_rate,
)
from speechbrain_ext.inference.onnx import OnnxLoadMixin
from speechbrain_ext.inference.sources import OfficialSourceMixin
from speechbrain_ext.lobes.models.masking import encode_mask_decode

#: Peak level of each separated speaker in written files (ModelScope's MossFormer pipeline's 0.5).
OUTPUT_PEAK = 0.5
#: Encoder frames per chunk of a long file unless the hparams name ``chunk_seconds``: 30 s of
#: MossFormer at 8 kHz, 15 s of MossFormer2 at 16 kHz (its cost per second grows with longer
#: passes, and its peak memory with the chunk).
DEFAULT_CHUNK_FRAMES = 30_000


class SeparateMossFormer(OnnxLoadMixin, OfficialSourceMixin, Pretrained):
    """A ready-to-use MossFormer or MossFormer2 separator, in the style of ``SepformerSeparation``.

    Load it from a SpeechBrain-format folder or Hugging Face repo (``encoder``, ``masknet``,
    ``decoder`` checkpoints), from an official id: ModelScope's MossFormer
    ``iic/speech_mossformer_separation_temporal_8k`` (or ``damo/...``, 8 kHz) or ClearerVoice-Studio's
    MossFormer2 ``alibabasglab/MossFormer2_SS_16K`` (Hugging Face, 16 kHz), or from a local folder
    of official weights: MossFormer's ``encoder.bin`` / ``masknet.bin`` / ``decoder.bin``, or
    MossFormer2's ``last_best_checkpoint`` and the checkpoint it names.

    Example
    -------
    >>> from speechbrain_ext.lobes.models.mossformer import MossFormer
    >>> small = MossFormer(in_channels=32, out_channels=32, num_blocks=1, d_model=32,
    ...                    group_size=16, query_key_dim=16).eval()
    >>> separator = SeparateMossFormer(
    ...     modules={"encoder": small.encoder, "masknet": small.masknet, "decoder": small.decoder},
    ...     hparams={"sample_rate": 8000, "num_spks": 2},
    ... )
    >>> separator.separate_batch(torch.randn(1, 4000)).shape
    torch.Size([1, 4000, 2])
    """

    MODULES_NEEDED = ["encoder", "masknet", "decoder"]
    HPARAMS_NEEDED = ["sample_rate", "num_spks"]

    def __init__(self, *args, freeze_params=True, **kwargs):
        super().__init__(*args, freeze_params=freeze_params, **kwargs)
        masknet = getattr(self.mods, "masknet", None)  # (none: an exported graph, from_onnx)
        if freeze_params and hasattr(masknet, "fuse_for_inference"):  # inference only
            masknet.fuse_for_inference()

    def _encoder_frames(self):
        """``(frame length, hop)`` of the encoder, in samples."""
        if "model" in self.mods:  # an exported graph (onnxruntime backend)
            return self.mods.model.kernel_size, self.mods.model.stride
        conv = self.mods.encoder.conv1d
        return conv.kernel_size[0], conv.stride[0]

    CARDS = ("mossformer-8k", "mossformer2-ss-16k")

    @classmethod
    def _folder_card(cls, folder):
        # ClearerVoice-Studio (MossFormer2) folders name their checkpoint in last_best_checkpoint.
        return cls.CARDS[1] if os.path.exists(os.path.join(folder, "last_best_checkpoint")) else cls.CARDS[0]

    @classmethod
    def _load_official(cls, hparams, folder):
        from speechbrain_ext.convert import (
            load_mossformer2_official,
            mossformer2_from_official,
            mossformer_from_official,
            read_official_configuration,
        )

        configuration = read_official_configuration(os.path.join(folder, "configuration.json"))
        mossformer2 = cls._folder_card(folder) == "mossformer2-ss-16k"
        if mossformer2 and not configuration:
            # ClearerVoice-Studio's own folder: the card's modules, filled in place.
            modules = {name: hparams[name] for name in cls.MODULES_NEEDED}
            load_mossformer2_official(modules, folder)
        else:  # sized by the folder's configuration.json (ModelScope's, or one we wrote)
            official = (mossformer2_from_official if mossformer2 else mossformer_from_official)(folder)
            modules = {name: getattr(official, name) for name in cls.MODULES_NEEDED}
        hparams["num_spks"] = modules["masknet"].num_spks
        # Official folders hold no rate (the card's); the folders we write hold theirs.
        rate = configuration.get("sample_rate")
        if isinstance(rate, (int, float)) and rate > 0:
            hparams["sample_rate"] = int(rate)
        return modules

    @property
    def sample_rate(self):
        return self.hparams.sample_rate

    def separate_batch(self, mix):
        """Separate a batch of mixtures.

        Arguments
        ---------
        mix : torch.Tensor, numpy array or list
            ``[B, T]`` (or ``[T]``) mixtures at the model's sample rate, float or integer PCM.

        Returns
        -------
        torch.Tensor
            ``[B, T, num_spks]`` separated sources (``[T, num_spks]`` for a 1-D input).
        """
        mix, single = as_waveform_batch(mix)
        mix = mix.to(self.device)
        if not torch.isfinite(mix).all():
            raise AudioInputError("input holds NaN or infinite samples")
        kernel = self._encoder_frames()[0]
        if mix.shape[-1] < kernel:
            raise AudioInputError(f"input of {mix.shape[-1]} samples is shorter than one encoder frame ({kernel})")
        with torch.no_grad():
            if "model" in self.mods:  # the whole model in one exported graph
                sources = self.mods.model(mix)
            else:
                sources = encode_mask_decode(self.mods.encoder, self.mods.masknet, self.mods.decoder, mix)
        return sources[0] if single else sources

    def _separate_stream(self, reader, chunk_seconds, overlap_seconds, batch_size):
        chunk, overlap = chunk_lengths(chunk_seconds, overlap_seconds, 2.0, self.sample_rate)

        def process(batch):
            return self.separate_batch(batch).cpu()

        return chunked_inference(iter(reader), reader.num_samples, process, chunk, overlap, batch_size,
                                 guard=int(0.01 * self.sample_rate), align_sources=True)

    def separate_file(self, path, savedir=None, chunk_seconds="auto", overlap_seconds=None, batch_size=1,
                      channels="mix", output_rate=None, subtype="PCM_16"):
        """Separate the speakers of an audio file of any length, sample rate and channel count.

        Long files are processed in overlapping chunks; each chunk's speakers are reordered to
        match the previous chunk on the overlap, so speaker 1 stays speaker 1 across the file.

        Arguments
        ---------
        path : str
            Input mixture.
        savedir : str, optional
            Folder for one file per speaker, ``<name>_spk1.wav``, ``<name>_spk2.wav``, ...; each
            speaker is scaled to a peak of 0.5 (as ModelScope's MossFormer pipeline does). Written through
            temporary files and renamed when complete.
        chunk_seconds : float, None or "auto"
            Chunk length (``None``: the whole file at once, in memory that grows with its length;
            ``"auto"``: the hparams' ``chunk_seconds`` if set, else 30,000 encoder frames: 30 s for
            MossFormer at 8 kHz, 15 s for MossFormer2 at 16 kHz).
        overlap_seconds : float, optional
            Overlap between chunks, used to align and cross-fade them (default: 2 s, at most a
            quarter chunk).
        batch_size : int
            Chunks per forward pass.
        channels : str or int
            ``'mix'`` (default), ``'all'`` (separate each channel), or a channel index.
        output_rate : int or str, optional
            Output sample rate; the model's by default, ``'input'`` for the input's.
        subtype : str
            Output sample format (``'PCM_16'`` or ``'FLOAT'``).

        Returns
        -------
        torch.Tensor or list of str
            Without ``savedir``: the sources ``[T, num_spks]`` (``[C, T, num_spks]`` for ``'all'``),
            each scaled to a peak of 1 like SpeechBrain's ``separate_file``. With it: the paths
            written.
        """
        if isinstance(chunk_seconds, str) and chunk_seconds == "auto":
            hop = self._encoder_frames()[1]
            chunk_seconds = getattr(self.hparams, "chunk_seconds", DEFAULT_CHUNK_FRAMES * hop / self.sample_rate)
        chunk_seconds, overlap_seconds = check_chunking(chunk_seconds, overlap_seconds)
        batch_size, channels = check_batch_size(batch_size), check_channels(channels)
        output_rate = check_output_rate(output_rate)
        reader = AudioReader(path, self.sample_rate, channels)
        blocks = self._separate_stream(reader, chunk_seconds, overlap_seconds, batch_size)
        if savedir is None:
            sources = torch.cat(list(blocks), dim=1)
            sources = sources / sources.abs().amax(dim=1, keepdim=True).clamp(min=1e-8)
            return sources if channels == "all" else sources[0]

        # Pass 1: stream float sources to staging files while tracking each speaker's peak;
        # pass 2: rescale to the output peak and write the final files atomically.
        rate = reader.sample_rate if output_rate == "input" else (output_rate or self.sample_rate)
        num_spks = self.hparams.num_spks
        finals = self.output_paths(path, savedir)
        peaks = np.zeros(num_spks)
        resamplers = [StreamResampler(self.sample_rate, rate) for _ in range(num_spks)]
        staging = [AtomicAudioWriter(final, rate, reader.num_channels, "FLOAT", source=path, temporary=1, rename=False)
                   for final in finals]
        try:
            with contextlib.ExitStack() as stack:  # a failure removes every staging file
                writers = [stack.enter_context(writer) for writer in staging]
                for block in itertools.chain(blocks, [None]):  # None: flush the resamplers
                    for s in range(num_spks):
                        out = resamplers[s].flush() if block is None else resamplers[s].push(block[..., s])
                        if out.numel():
                            peaks[s] = max(peaks[s], float(out.abs().max()))
                        writers[s].write(out.T)
            for s in range(num_spks):
                gain = OUTPUT_PEAK / peaks[s] if peaks[s] > 0 else 1.0
                with AtomicAudioWriter(finals[s], rate, reader.num_channels, subtype, source=path) as writer:
                    for block in sf.blocks(staging[s].temporary_path, blocksize=rate * 10, dtype="float32",
                                           always_2d=True):
                        writer.write(block * gain)
        finally:
            for writer in staging:
                if os.path.exists(writer.temporary_path):
                    os.remove(writer.temporary_path)
        return finals

    def output_paths(self, path, savedir):
        """The files :meth:`separate_file` writes for ``path``: ``savedir/<name>_spk<k>.wav``."""
        stem = os.path.splitext(os.path.basename(os.fspath(path)))[0]
        return [os.path.join(savedir, f"{stem}_spk{s + 1}.wav") for s in range(self.hparams.num_spks)]

    def forward(self, mix):
        """Separate a batch (see :meth:`separate_batch`)."""
        return self.separate_batch(mix)

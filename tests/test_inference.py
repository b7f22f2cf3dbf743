"""Pretrained interfaces: batches, long files, any rate/channels, bad input, chunk stitching."""

import numpy as np
import pytest
import soundfile as sf
import torch

from speechbrain_ext.inference import EnhanceFRCRN, SeparateMossFormer
from speechbrain_ext.audio import AudioInputError, AudioReader
from speechbrain_ext.inference.chunking import OverlapStitcher, chunk_starts, chunked_inference
from speechbrain_ext.evaluation.metrics import si_snr
from speechbrain_ext.lobes.models.frcrn import FRCRN
from speechbrain_ext.lobes.models.mossformer import MossFormer
from speechbrain_ext.synthetic import mix_at_snr, pink_noise, speech_like, two_speaker_mixture


def small_enhancer(seed=0):
    torch.manual_seed(seed)
    return EnhanceFRCRN(modules={"model": FRCRN(channels=16, fsmn_hidden=16)}, hparams={"sample_rate": 16000})


def small_separator(seed=0):
    torch.manual_seed(seed)
    model = MossFormer(in_channels=32, out_channels=32, num_blocks=1, d_model=32, group_size=16, query_key_dim=16)
    modules = {"encoder": model.encoder, "masknet": model.masknet, "decoder": model.decoder}
    return SeparateMossFormer(modules=modules, hparams={"sample_rate": 8000, "num_spks": 2})


def noisy_speech(seconds, rate=16000, seed=0):
    clean = speech_like(seconds, rate, seed=seed)
    noisy, _ = mix_at_snr(clean, pink_noise(seconds, rate, seed=seed + 100), snr_db=5)
    return noisy


@pytest.fixture(scope="module")
def enhancer():
    return small_enhancer()


def test_padded_batch_items_match_items_alone(enhancer):
    long, short = torch.from_numpy(noisy_speech(1.5, seed=1)), torch.from_numpy(noisy_speech(0.9, seed=2))
    batch = torch.zeros(2, len(long))
    batch[0], batch[1, : len(short)] = long, short
    out = enhancer.enhance_batch(batch, lengths=torch.tensor([1.0, len(short) / len(long)]))
    assert (out[1, : len(short)] - enhancer.enhance_batch(short[None])[0]).abs().max() < 1e-5
    assert (out[0] - enhancer.enhance_batch(long[None])[0]).abs().max() < 1e-5
    assert not out[1, len(short) :].any()


def test_every_sample_comes_back_and_int_input_is_scaled(enhancer):
    noisy = torch.from_numpy(noisy_speech(1.0))[: 16000 - 123]  # not a whole number of hops
    out = enhancer.enhance_batch(noisy)
    assert out.shape == noisy.shape and out[-100:].abs().sum() > 0
    as_int = (noisy * 32767).round().to(torch.int16)
    assert (enhancer.enhance_batch(as_int) - out).abs().max() < 1e-3


def test_level_normalisation_makes_output_follow_input_level(enhancer):
    noisy = torch.from_numpy(noisy_speech(1.0))
    quiet, loud = enhancer.enhance_batch(0.01 * noisy), enhancer.enhance_batch(0.5 * noisy)
    assert torch.allclose(loud, 50 * quiet, rtol=1e-3, atol=1e-4)


def test_chunked_file_agrees_with_whole_file(enhancer, tmp_path):
    path = tmp_path / "long.wav"
    sf.write(path, noisy_speech(12.0, seed=3), 16000, subtype="FLOAT")
    whole = enhancer.enhance_file(path, chunk_seconds=None)
    chunked = enhancer.enhance_file(path, chunk_seconds=4.0, overlap_seconds=1.0, batch_size=2)
    assert chunked.shape == whole.shape == (12 * 16000,)
    agreement = si_snr(chunked[None], whole[None], zero_mean=False).item()
    assert agreement >= 30, agreement


def test_any_rate_and_channels(enhancer, tmp_path):
    stereo = np.stack([noisy_speech(2.0, 44100, seed=4), noisy_speech(2.0, 44100, seed=5)], axis=1)
    path = tmp_path / "stereo.flac"
    sf.write(path, stereo, 44100, subtype="PCM_16")
    out_path = tmp_path / "out" / "mix.wav"
    result = enhancer.enhance_file(path, out_path)
    data, rate = sf.read(out_path)
    assert rate == 16000 and data.ndim == 1 and len(data) == 32000 and result["seconds"] == 2.0
    enhancer.enhance_file(path, tmp_path / "out" / "both.wav", channels="all", output_rate="input")
    data, rate = sf.read(tmp_path / "out" / "both.wav")
    assert rate == 44100 and data.shape == (88200, 2)
    assert np.abs(data[:, 0] - data[:, 1]).max() > 1e-3  # channels enhanced separately
    left = enhancer.enhance_file(path, channels=0)
    both = enhancer.enhance_file(path, channels="all")
    assert both.shape == (2, 32000) and (left - both[0]).abs().max() < 1e-5


def test_loud_output_is_clipped_not_wrapped(enhancer, tmp_path):
    path = tmp_path / "loud.wav"
    sf.write(path, np.clip(4 * noisy_speech(1.0), -1, 1), 16000, subtype="FLOAT")
    enhancer.hparams.normalize = False  # random weights on a loud input: output beyond full scale
    try:
        result = enhancer.enhance_file(path, tmp_path / "loud_out.wav")
        reference = enhancer.enhance_file(path)
    finally:
        enhancer.hparams.normalize = True
    data, _ = sf.read(tmp_path / "loud_out.wav", dtype="int16")
    beyond = (reference.abs() > 1.0).numpy()
    assert result["clipped_samples"] == beyond.sum() > 0
    # Beyond full scale the file holds full scale with the right sign (int16 would wrap around).
    assert (np.abs(data[beyond].astype(int)) >= 32767).all()
    assert (np.sign(data[beyond]) == np.sign(reference.numpy()[beyond])).all()


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda p: sf.write(p, np.zeros(0, dtype=np.float32), 16000), "holds no samples"),
        (lambda p: sf.write(p, np.zeros(300, dtype=np.float32), 16000), "shorter than one FRCRN frame"),
        (lambda p: sf.write(p, np.full(16000, np.nan, dtype=np.float32), 16000, subtype="FLOAT"), "NaN"),
        (lambda p: p.write_bytes(b"RIFF not really a wave file"), "not a readable audio file"),
    ],
)
def test_bad_files_raise_one_clear_error_and_write_nothing(enhancer, tmp_path, make, message):
    path = tmp_path / "bad.wav"
    make(path)
    out = tmp_path / "out"
    with pytest.raises(AudioInputError, match=message):
        enhancer.enhance_file(path, out / "bad.wav")
    assert not out.exists() or not any(out.iterdir())


def test_stitcher_fixes_permuted_chunks():
    mixture, sources = two_speaker_mixture(6.0, 8000, seed=0)
    truth = torch.from_numpy(sources.T.copy())  # [T, 2]
    starts = chunk_starts(len(mixture), 8000, 2000)

    def permuting_separator(batch):  # returns the true sources, in a different order per chunk
        outputs = []
        for chunk in batch:
            start = next(s for s in starts if torch.equal(chunk, torch.from_numpy(mixture[s : s + 8000])))
            order = [1, 0] if starts.index(start) % 2 else [0, 1]
            outputs.append(truth[start : start + 8000][:, order])
        return torch.stack(outputs)

    blocks = [torch.from_numpy(mixture)[None]]
    aligned = torch.cat(list(chunked_inference(blocks, len(mixture), permuting_separator, 8000, 2000,
                                               guard=80, align_sources=True)), dim=1)[0]
    assert torch.allclose(aligned, truth, atol=1e-6)
    unaligned = torch.cat(list(chunked_inference(blocks, len(mixture), permuting_separator, 8000, 2000,
                                                 guard=80)), dim=1)[0]
    assert not torch.allclose(unaligned, truth, atol=1e-2)


def test_stitcher_cross_fades_between_guards():
    stitcher = OverlapStitcher(guard=2)
    first = stitcher.add(torch.ones(1, 20), 0)
    second = stitcher.add(torch.zeros(1, 20), 10)
    out = torch.cat([first, second, stitcher.finish()], dim=1)[0]
    assert out.shape[0] == 30 and torch.all(out[:12] == 1) and torch.all(out[18:] == 0)
    assert torch.all(out[12:18].diff() < 0)  # a monotonic fade in between


def test_reader_streams_in_blocks(tmp_path):
    path = tmp_path / "a.wav"
    sf.write(path, np.random.default_rng(0).standard_normal((48000, 3)).astype(np.float32) * 0.1, 48000)
    reader = AudioReader(path, 16000, channels="all", block_seconds=0.25)
    blocks = list(reader)
    assert len(blocks) >= 4 and all(b.shape[0] == 3 for b in blocks)
    assert sum(b.shape[-1] for b in blocks) == reader.num_samples == 16000
    with pytest.raises(AudioInputError, match="channel selection"):
        AudioReader(path, 16000, channels=5)


def test_separate_batch_and_files(tmp_path):
    separator = small_separator()
    mixture, _ = two_speaker_mixture(3.0, 8000, seed=1)
    mix = torch.from_numpy(mixture)
    est = separator.separate_batch(mix[None])
    assert est.shape == (1, len(mixture), 2)
    model = MossFormer.from_modules(separator.mods.encoder, separator.mods.masknet, separator.mods.decoder).eval()
    with torch.no_grad():
        assert torch.allclose(est, model(mix[None]), atol=1e-6)
    path = tmp_path / "mix.wav"
    sf.write(path, mixture, 8000)
    written = separator.separate_file(path, savedir=tmp_path / "sep", chunk_seconds=1.0, overlap_seconds=0.25)
    assert [p.rsplit("/", 1)[-1] for p in written] == ["mix_spk1.wav", "mix_spk2.wav"]
    for p in written:
        data, rate = sf.read(p)
        assert rate == 8000 and len(data) == len(mixture) and abs(np.abs(data).max() - 0.5) < 1e-3
    assert sorted(f.name for f in (tmp_path / "sep").iterdir()) == ["mix_spk1.wav", "mix_spk2.wav"]


@pytest.mark.parametrize("total,chunk,overlap", [(16000, 6000, 1500), (1000, 300, 50), (999, 1000, 10)])
def test_chunking_reconstructs_an_identity_model(total, chunk, overlap):
    signal = torch.randn(2, total)
    out = chunked_inference(signal.split(777, dim=1), total, lambda x: x.clone(), chunk, overlap, batch_size=2, guard=7)
    assert torch.allclose(torch.cat(list(out), dim=1), signal, atol=1e-6)

"""MossFormer2 fullband enhancement (48 kHz): parity with ClearerVoice-Studio's own network and
decoding steps, gradients, the strict converters, the interface, the CLI and ClearVoice's loader.

The reference is an oracle only: seeded random weights, every tensor perturbed.
"""

import argparse
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from speechbrain_ext.convert import (
    CheckpointMismatchError,
    mossformer2_se_from_official,
    mossformer2_se_to_official,
)
from speechbrain_ext.inference import EnhanceFRCRN, EnhanceMossFormer2, enhancer_for
from speechbrain_ext.lobes.models import mossformer2_se as se_module
from speechbrain_ext.lobes.models.mossformer2_se import MossFormer2SE
from speechbrain_ext.model_folders import write_model_folder

from conftest import assert_close_to_peak, gradients_as_model, make_reference_mossformer2_se, perturb_, run_doctests
from test_sources import COMMIT_A, clearervoice_files, fill_hf_cache, run_offline

pytestmark = pytest.mark.usefixtures("two_threads")  # as on the 2-core CI machine

RATE = 48000
TINY = dict(d_model=32, num_blocks=1, group_size=16, query_key_dim=16, fsmn_channels=16)
CLI = os.path.join(os.path.dirname(sys.executable), "speechbrain-ext")




@pytest.fixture(scope="module")
def official_pair():
    """(reference network, ours) at the official (only) size, same random weights."""
    theirs = make_reference_mossformer2_se(seed=0)
    return theirs, mossformer2_se_from_official({"model": {f"module.{k}": v for k, v in theirs.state_dict().items()}})


def noisy(batch, seconds, seed=0):
    return 0.1 * torch.randn(batch, int(seconds * RATE), generator=torch.Generator().manual_seed(seed))


def clearvoice_enhance(theirs, wave, monkeypatch):
    """ClearVoice's own decoding of one waveform (its one-pass branch, up to 20 s), with the
    feature dithering off (its Kaldi ``dither=1.0`` draws random noise)."""
    import torchaudio
    from clearvoice.utils import decode

    def fbank_without_dither(audio_in, args):
        return torchaudio.compliance.kaldi.fbank(
            audio_in, dither=0.0, frame_length=args.win_len / args.sampling_rate * 1000,
            frame_shift=args.win_inc / args.sampling_rate * 1000, num_mel_bins=args.num_mels,
            sample_frequency=args.sampling_rate, window_type=args.win_type,
        )  # fmt: skip

    monkeypatch.setattr(decode, "compute_fbank", fbank_without_dither)
    # Its config/inference/MossFormer2_SE_48K.yaml.
    args = argparse.Namespace(sampling_rate=48000, one_time_decode_length=20, decode_window=4, win_type="hamming",
                              win_len=1920, win_inc=384, fft_len=1920, num_mels=60)
    with torch.no_grad():
        return torch.as_tensor(decode.decode_one_audio_mossformer2_se_48k(theirs, "cpu", wave[None].numpy(), args))


def test_parity_with_clearvoice_decoding(official_pair, monkeypatch):
    """Our model on a 1.3 s input (not whole frames) = ClearVoice's features, network, mask and
    resynthesis, within 1e-4 of the output's peak."""
    theirs, ours = official_pair
    wave = noisy(1, 1.3, seed=1)[0]
    expected = clearvoice_enhance(theirs, wave.double(), monkeypatch).float()
    with torch.no_grad():
        assert_close_to_peak(ours(wave[None])[0], expected)


def test_batch_items_match_single_runs_and_fused(official_pair):
    theirs, ours = official_pair
    batch = noisy(2, 0.5, seed=2)
    with torch.no_grad():
        together = ours(batch)
        for item in range(2):
            assert_close_to_peak(together[item], ours(batch[item : item + 1])[0], 1e-5)
        fused = mossformer2_se_from_official(mossformer2_se_to_official(ours)).fuse_for_inference()
        assert_close_to_peak(fused(batch), together, 1e-5)


def test_round_trip_loads_strictly_into_reference(official_pair, tmp_path):
    theirs, ours = official_pair
    exported = mossformer2_se_to_official(ours)
    state = theirs.state_dict()
    assert exported.keys() == state.keys() and all(torch.equal(exported[k], state[k]) for k in state)
    mossformer2_se_to_official(ours, tmp_path / "folder", sample_rate=48000)
    again = mossformer2_se_from_official(tmp_path / "folder")
    assert again.config == ours.config == MossFormer2SE().config
    assert sum(p.numel() for p in again.parameters()) == 55_262_170


def test_rejects_mismatched_checkpoints(official_pair):
    theirs, _ = official_pair
    state = theirs.state_dict()
    name = "mossformer.mdl.intra_mdl.mossformerM.fsmn.3.gated_fsmn.fsmn.conv1.weight"
    with pytest.raises(CheckpointMismatchError, match="missing 1 tensor"):
        mossformer2_se_from_official({k: v for k, v in state.items() if k != name})
    with pytest.raises(CheckpointMismatchError, match="unexpected 1 tensor"):
        mossformer2_se_from_official({**state, "generator.weight": torch.zeros(1)})
    with pytest.raises(CheckpointMismatchError, match="wrong shape"):
        mossformer2_se_from_official(state, memory_order=10)


def test_gradients_match_reference_at_a_small_size():
    """A small reference masknet (ClearVoice's MossFormer_MaskNet class; its recurrent modules
    fixed at 256 channels) under our front end: every parameter's gradient of an SI-SNR loss on the
    enhanced waveform is the reference's (float64, dropout off)."""
    from clearvoice.models.mossformer2_se.mossformer2 import MossFormer_MaskNet
    from speechbrain.nnet.losses import get_si_snr_with_pitwrapper

    torch.manual_seed(3)
    theirs = perturb_(MossFormer_MaskNet(in_channels=180, out_channels=32, out_channels_final=961, num_blocks=1), 4)
    for module in theirs.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    small = dict(d_model=32, num_blocks=1, fsmn_channels=256, attn_dropout=0.0)
    ours = mossformer2_se_from_official({f"mossformer.{k}": v for k, v in theirs.state_dict().items()}, **small)
    theirs.double().train(), ours.double().train()
    wave = noisy(1, 0.2, seed=5).double()
    clean = noisy(1, 0.2, seed=6).double()

    def reference_forward(wave):
        mask = theirs(ours.features(wave)).transpose(1, 2)  # its [B, S, 961] -> [B, 961, S]
        spectrum = torch.stft(wave, 1920, 384, 1920, ours.window.double(), center=False, return_complex=True)
        return torch.istft(spectrum * mask, 1920, 384, 1920, ours.window.double(), center=False, length=wave.shape[-1])

    for output in (ours(wave), reference_forward(wave)):
        get_si_snr_with_pitwrapper(clean[..., None], output[..., None]).mean().backward()
    official = mossformer2_se_to_official(ours)
    exported_grads = mossformer2_se_to_official(gradients_as_model(ours))  # our gradients, official names
    worst = 0.0
    for name, parameter in theirs.named_parameters():
        if parameter.requires_grad:
            key = f"mossformer.{name}"
            assert torch.equal(official[key], parameter.detach())
            worst = max(worst, ((exported_grads[key] - parameter.grad).abs().max() / parameter.grad.abs().max()).item())
    assert worst <= 1e-4, f"largest gradient difference {worst:.2e} of the gradient's scale"


def test_interface_enhances_files_of_any_rate_and_channels(tmp_path):
    """EnhanceMossFormer2 from an official-layout folder (small, sized by its configuration.json):
    a 16 kHz stereo file is enhanced per channel at 48 kHz and written at the input's rate on
    request; a whole-file pass equals enhance_batch, a chunked one keeps the file's length."""
    torch.manual_seed(0)
    model = perturb_(MossFormer2SE(**TINY), 7)
    mossformer2_se_to_official(model, tmp_path / "official", sample_rate=48000)
    enhancer = EnhanceMossFormer2.from_hparams(source=str(tmp_path / "official"))
    assert enhancer.sample_rate == 48000 and not enhancer.normalize
    assert enhancer_for(str(tmp_path / "official")) is EnhanceMossFormer2

    stereo = np.stack([noisy(1, 1.0, seed=8)[0].numpy(), noisy(1, 1.0, seed=9)[0].numpy()], axis=1)
    sf.write(tmp_path / "noisy.wav", stereo[::3], 16000)
    result = enhancer.enhance_file(str(tmp_path / "noisy.wav"), str(tmp_path / "out.wav"), channels="all",
                                   output_rate="input")
    info = sf.info(tmp_path / "out.wav")
    assert (info.samplerate, info.channels, info.frames) == (16000, 2, 16000) and result["clipped_samples"] == 0

    wave = noisy(1, 2.5, seed=10)
    sf.write(tmp_path / "long.wav", wave[0].numpy(), RATE, subtype="FLOAT")
    whole = enhancer.enhance_file(str(tmp_path / "long.wav"), chunk_seconds=None)
    chunked = enhancer.enhance_file(str(tmp_path / "long.wav"), chunk_seconds=1.0, overlap_seconds=0.25)
    assert_close_to_peak(whole, enhancer.enhance_batch(wave)[0], 1e-6)
    assert whole.shape == chunked.shape == (wave.shape[-1],)
    with pytest.raises(Exception, match="shorter than one MossFormer2 frame"):
        enhancer.enhance_batch(torch.zeros(1, 1000))


def test_bad_configurations_are_one_clear_error(tmp_path):
    from speechbrain_ext.inference import WaveformEnhancer
    from speechbrain_ext.inference.sources import SourceError

    with pytest.raises(ValueError, match="fft_len must equal win_len"):
        MossFormer2SE(fft_len=2048)
    with pytest.raises(ValueError, match="features at 48000 Hz, not 16000"):
        mossformer2_se_to_official(MossFormer2SE(**TINY), tmp_path / "x", sample_rate=16000)
    masknet = MossFormer2SE(**TINY).masknet
    with pytest.raises(ValueError, match="speakers must be between 1 and num_spks=2"):
        masknet(torch.randn(1, 180, 20), speakers=3)
    with pytest.raises(SourceError, match="SpeechBrain-format sources only"):
        WaveformEnhancer.from_hparams(source="alibabasglab/MossFormer2_SE_48K")


def test_official_repo_from_offline_cache_and_clearvoice_loader(official_pair, tmp_path):
    """alibabasglab/MossFormer2_SE_48K from huggingface_hub's cache (HF_HUB_OFFLINE=1) as
    ClearerVoice-Studio publishes it; then `convert --to clearervoice` of that model loads every
    tensor in ClearVoice's own loader."""
    from clearvoice.networks import CLS_MossFormer2_SE_48K

    theirs, ours = official_pair
    home = str(tmp_path / "hf")
    fill_hf_cache(home, "alibabasglab/MossFormer2_SE_48K", {COMMIT_A: clearervoice_files(theirs.state_dict())},
                  main=COMMIT_A)
    code = f"""
from speechbrain_ext.inference import EnhanceMossFormer2
noisy = 0.1 * torch.randn(1, 30001, generator=torch.Generator().manual_seed(0))
model = EnhanceMossFormer2.from_hparams(source="alibabasglab/MossFormer2_SE_48K")
assert model.sample_rate == 48000
torch.save(model.enhance_batch(noisy), {str(tmp_path / "out.pt")!r})
"""
    out = run_offline(code, {"HF_HOME": home}, tmp_path)
    wave = 0.1 * torch.randn(1, 30001, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = ours(torch.nn.functional.pad(wave, (0, 30336 - 30001)))[:, :30001]  # padded to whole frames
    assert_close_to_peak(out, expected, 1e-5)

    enhancer = EnhanceMossFormer2(modules={"model": ours}, hparams={"sample_rate": 48000, "normalize": False})
    folder = tmp_path / "clearervoice"
    write_model_folder(enhancer, folder, "clearervoice")
    args = argparse.Namespace(checkpoint_dir=str(folder), network="MossFormer2_SE_48K", mode="inference", use_cuda=0,
                              sampling_rate=48000)
    loaded = CLS_MossFormer2_SE_48K(args).model.state_dict()
    exported = mossformer2_se_to_official(ours)
    assert loaded.keys() == exported.keys() and all(torch.equal(loaded[k], exported[k]) for k in loaded)


def test_cli_picks_the_mossformer2_interface_and_refuses_what_it_cannot_do(tmp_path):
    torch.manual_seed(0)
    model = MossFormer2SE(**TINY)
    enhancer = EnhanceMossFormer2(modules={"model": model}, hparams={"sample_rate": 48000, "normalize": False})
    write_model_folder(enhancer, tmp_path / "model")
    assert enhancer_for(str(tmp_path / "model")) is EnhanceMossFormer2
    assert enhancer_for("alibabasglab/FRCRN_SE_16K") is EnhanceFRCRN
    sf.write(tmp_path / "noisy.wav", noisy(1, 0.5, seed=3)[0].numpy(), 44100)

    def run(*args):
        return subprocess.run([CLI, *map(str, args)], capture_output=True, text=True)

    done = run("enhance", tmp_path / "noisy.wav", "-o", tmp_path / "out", "--model", tmp_path / "model", "--quiet")
    assert done.returncode == 0, done.stdout + done.stderr
    assert sf.info(tmp_path / "out" / "noisy.wav").samplerate == 48000
    stream = run("enhance", tmp_path / "noisy.wav", "-o", tmp_path / "s", "--model", tmp_path / "model", "--stream",
                 "--quiet")
    assert stream.returncode == 1 and "--stream needs a causal FRCRN" in stream.stderr
    assert "non-causal MossFormer2SE" in stream.stderr and "Traceback" not in stream.stderr
    assert not (tmp_path / "s").exists()  # refused before any file was touched
    modelscope = run("convert", "enhancement", "--model", tmp_path / "model", "-o", tmp_path / "ms", "--to", "modelscope")
    assert modelscope.returncode == 1 and "ModelScope has no MossFormer2" in modelscope.stderr
    clearvoice = run("convert", "enhancement", "--model", tmp_path / "model", "-o", tmp_path / "cv", "--to", "clearervoice")
    assert clearvoice.returncode == 1 and "builds only the official MossFormer2_SE_48K" in clearvoice.stderr
    assert not (tmp_path / "ms").exists() and not (tmp_path / "cv").exists()

    # An official-layout folder converts to a SpeechBrain folder that loads as the same model.
    mossformer2_se_to_official(model, tmp_path / "official", sample_rate=48000)
    converted = run("convert", "enhancement", "--model", tmp_path / "official", "-o", tmp_path / "sb")
    assert converted.returncode == 0, converted.stderr
    again = EnhanceMossFormer2.from_hparams(source=str(tmp_path / "sb"), savedir=str(tmp_path / "sb"))
    wave = noisy(1, 0.3, seed=4)
    assert torch.equal(again.enhance_batch(wave), enhancer.enhance_batch(wave))


def test_doctests():
    from speechbrain_ext import convert
    from speechbrain_ext.inference import enhancement

    run_doctests((se_module, None), (convert, "mossformer2_se"), (enhancement, "MossFormer2"))

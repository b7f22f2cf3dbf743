"""MossFormerGAN enhancement (16 kHz): parity with ClearerVoice-Studio's own generator and
decoding, gradients, the strict converters, the interface, the CLI and ClearVoice's loader.

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
    mossformer_gan_from_official,
    mossformer_gan_to_official,
)
from speechbrain_ext.inference import EnhanceFRCRN, EnhanceMossFormerGAN, enhancer_for
from speechbrain_ext.lobes.models import mossformer_gan as gan_module
from speechbrain_ext.lobes.models.mossformer import _onednn_linear_available
from speechbrain_ext.lobes.models.mossformer_gan import MossFormerGANSE
from speechbrain_ext.model_folders import write_model_folder

from conftest import MOSSFORMER_GAN_ARGS, assert_close_to_peak, gradients_as_model, make_reference_mossformer_gan, perturb_, run_doctests
from test_sources import COMMIT_A, clearervoice_files, fill_hf_cache, run_offline

pytestmark = pytest.mark.usefixtures("two_threads")  # as on the 2-core CI machine

TINY = dict(channels=16, num_blocks=1, hidden_channels=32, query_key_dim=16, qk_channels=3)
CLI = os.path.join(os.path.dirname(sys.executable), "speechbrain-ext")




@pytest.fixture(scope="module")
def official_pair():
    theirs = make_reference_mossformer_gan(seed=0)
    return theirs, mossformer_gan_from_official({"model": {f"module.{k}": v for k, v in theirs.state_dict().items()}})


def noisy(batch, samples, seed=0):
    return 0.1 * torch.randn(batch, samples, generator=torch.Generator().manual_seed(seed))


def clearvoice_enhance(theirs, wave):
    """ClearVoice's own decoding of one waveform (its one-pass branch, up to 10 s)."""
    from clearvoice.utils import decode

    with torch.no_grad():
        out = decode.decode_one_audio_mossformergan_se_16k(theirs, "cpu", wave[None].numpy(),
                                                          argparse.Namespace(**MOSSFORMER_GAN_ARGS))
    return torch.as_tensor(out)


@pytest.mark.parametrize("samples", [4801, 3250])  # not whole hops: ClearVoice wraps the start around
def test_parity_with_clearvoice_decoding(official_pair, samples):
    theirs, ours = official_pair
    wave = noisy(1, samples, seed=samples)[0]
    with torch.no_grad():
        assert_close_to_peak(ours(wave[None])[0], clearvoice_enhance(theirs, wave))


def test_batch_items_match_single_runs(official_pair):
    _, ours = official_pair
    batch = noisy(2, 2400, seed=2) * torch.tensor([[1.0], [0.2]])  # different levels: each normalised alone
    with torch.no_grad():
        together = ours(batch)
        for item in range(2):
            assert_close_to_peak(together[item], ours(batch[item : item + 1])[0], 1e-5)


@pytest.mark.parametrize("itemwise_from", [1, 10**9])  # every sequence one item at a time / none
def test_inference_route_equals_the_autograd_route(monkeypatch, itemwise_from):
    """Without a graph, the units' attention adds its parts in place (score maps item by item
    through oneDNN, or batched and transformed in place): the same sums as autograd's route."""
    monkeypatch.setattr(gan_module, "ITEMWISE_ATTENTION_LENGTH", itemwise_from)
    assert _onednn_linear_available()  # else both cases would take the batched route
    torch.manual_seed(0)
    model = MossFormerGANSE(**TINY).eval()
    for name, tensor in model.state_dict().items():  # make the attention matter
        if name.endswith("qk_gain"):
            tensor.normal_()
    batch = noisy(2, 2003, seed=4)
    autograd_route = model(batch)  # parameters require gradients: a graph is built
    assert autograd_route.requires_grad
    with torch.no_grad():
        assert_close_to_peak(model(batch), autograd_route.detach(), 1e-6)
        fused = model.fuse_for_inference()
        assert fused.recycles_memory
        assert_close_to_peak(fused(batch), autograd_route.detach(), 1e-6)
    fused.train()
    assert not fused.recycles_memory
    assert not any(getattr(m, "prepacked", False) for m in fused.modules())


def test_round_trip_and_strictness(official_pair, tmp_path):
    theirs, ours = official_pair
    state = theirs.state_dict()
    exported = mossformer_gan_to_official(ours)
    assert exported.keys() == state.keys() and all(torch.equal(exported[k], state[k]) for k in state)
    assert sum(p.numel() for p in ours.parameters()) == 3_128_639
    mossformer_gan_to_official(ours, tmp_path / "folder")
    assert mossformer_gan_from_official(tmp_path / "folder").config == MossFormerGANSE().config
    name = "blocks.2.inter_rnn.0.conv1.weight"
    with pytest.raises(CheckpointMismatchError, match=f"missing 1 tensor.*{name}"):
        mossformer_gan_from_official({k: v for k, v in state.items() if k != name})
    with pytest.raises(CheckpointMismatchError, match="unexpected 1 tensor.*discriminator.weight"):
        mossformer_gan_from_official({**state, "discriminator.weight": torch.zeros(1)})
    with pytest.raises(CheckpointMismatchError, match="wrong shape"):
        mossformer_gan_from_official(state, hidden_channels=64)


def test_gradients_match_reference(official_pair):
    """The official generator (its only size) on a short input in float64, dropout off in both:
    every parameter's gradient of an SI-SNR loss on the resynthesised waveform is the reference's."""
    from speechbrain.nnet.losses import get_si_snr_with_pitwrapper

    theirs = make_reference_mossformer_gan(seed=5).double()
    for module in theirs.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    ours = mossformer_gan_from_official(theirs.state_dict(), **{}).double()
    for module in ours.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    theirs.train(), ours.train()
    wave, clean = noisy(1, 800, seed=6).double(), noisy(1, 800, seed=7).double()

    def reference_forward(x):  # our front end around their generator: the generator's gradients compared
        gain = torch.rsqrt(x.pow(2).mean(-1, keepdim=True))
        spectrum = torch.stft(x * gain, 400, 100, 400, ours.window.double(), return_complex=True)
        compressed = torch.polar(spectrum.abs().pow(0.3), spectrum.angle())
        real, imag = theirs(torch.stack((compressed.real, compressed.imag), 1).transpose(2, 3))
        out = torch.complex(real, imag)[:, 0].transpose(1, 2)
        out = torch.polar(out.abs().pow(1 / 0.3), out.angle())
        return torch.istft(out, 400, 100, 400, ours.window.double(), length=x.shape[-1]) / gain

    for output in (ours(wave), reference_forward(wave)):
        get_si_snr_with_pitwrapper(clean[..., None], output[..., None]).mean().backward()
    our_grads = mossformer_gan_to_official(gradients_as_model(ours))  # our gradients, official names
    trained = [(name, p) for name, p in theirs.named_parameters() if p.requires_grad]
    # Some gradients are zero in exact arithmetic (biases before an InstanceNorm, the keys' offsets
    # under a softmax): they are compared on the scale of the largest gradient, not their own.
    floor = 1e-6 * max(p.grad.abs().max().item() for _, p in trained)
    worst = max(((our_grads[name] - p.grad).abs().max() / max(p.grad.abs().max().item(), floor)).item()
                for name, p in trained)
    assert worst <= 1e-4, f"largest gradient difference {worst:.2e} of the gradient's scale"


def test_interface_offline_cache_clearvoice_loader_and_cli(official_pair, tmp_path):
    """alibabasglab/MossFormerGAN_SE_16K from huggingface_hub's cache (HF_HUB_OFFLINE=1); our
    `convert --to clearervoice` folder loads every tensor in ClearVoice's own loader; the CLI picks
    the interface and enhances a 44.1 kHz stereo file."""
    from clearvoice.networks import CLS_MossFormerGAN_SE_16K

    theirs, ours = official_pair
    home = str(tmp_path / "hf")
    fill_hf_cache(home, "alibabasglab/MossFormerGAN_SE_16K", {COMMIT_A: clearervoice_files(theirs.state_dict())},
                  main=COMMIT_A)
    code = f"""
from speechbrain_ext.inference import EnhanceMossFormerGAN
noisy = 0.1 * torch.randn(1, 5000, generator=torch.Generator().manual_seed(0))
model = EnhanceMossFormerGAN.from_hparams(source="alibabasglab/MossFormerGAN_SE_16K")
assert model.sample_rate == 16000 and not model.normalize
torch.save(model.enhance_batch(noisy), {str(tmp_path / "out.pt")!r})
"""
    out = run_offline(code, {"HF_HOME": home}, tmp_path)
    wave = 0.1 * torch.randn(1, 5000, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = ours(wave)  # 5000 samples: whole frames of 400 every 100, nothing padded
    assert_close_to_peak(out, expected, 1e-5)
    assert enhancer_for("alibabasglab/MossFormerGAN_SE_16K") is EnhanceMossFormerGAN

    enhancer = EnhanceMossFormerGAN(modules={"model": ours}, hparams={"sample_rate": 16000})
    write_model_folder(enhancer, tmp_path / "cv", "clearervoice")
    args = argparse.Namespace(checkpoint_dir=str(tmp_path / "cv"), network="MossFormerGAN_SE_16K", use_cuda=0,
                              **MOSSFORMER_GAN_ARGS)
    loaded = CLS_MossFormerGAN_SE_16K(args).model.state_dict()
    exported = mossformer_gan_to_official(ours)
    assert loaded.keys() == exported.keys() and all(torch.equal(loaded[k], exported[k]) for k in loaded)
    assert enhancer_for(str(tmp_path / "cv")) is EnhanceMossFormerGAN

    small = EnhanceMossFormerGAN(modules={"model": perturb_(MossFormerGANSE(**TINY), 3)}, hparams={"sample_rate": 16000})
    write_model_folder(small, tmp_path / "sb")
    assert enhancer_for(str(tmp_path / "sb")) is EnhanceMossFormerGAN and enhancer_for("alibabasglab/FRCRN_SE_16K") is EnhanceFRCRN
    stereo = noisy(2, 44100, seed=8).T.numpy()
    sf.write(tmp_path / "noisy.wav", stereo, 44100)
    done = subprocess.run([CLI, "enhance", str(tmp_path / "noisy.wav"), "-o", str(tmp_path / "out"), "--model",
                           str(tmp_path / "sb"), "--channels", "all", "--quiet"], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    info = sf.info(tmp_path / "out" / "noisy.wav")
    assert (info.samplerate, info.channels, info.frames) == (16000, 2, 16000)
    refused = subprocess.run([CLI, "convert", "enhancement", "--model", str(tmp_path / "sb"), "-o", str(tmp_path / "x"),
                              "--to", "clearervoice"], capture_output=True, text=True)
    assert refused.returncode == 1 and "builds only the official MossFormerGAN_SE_16K" in refused.stderr
    with pytest.raises(Exception, match="shorter than one MossFormerGAN frame"):
        small.enhance_batch(torch.zeros(1, 300))

    # Long files: 4 s chunks by default (quadratic attention), unless the hparams say otherwise.
    sf.write(tmp_path / "long.wav", noisy(1, 16000 * 6, seed=9)[0].numpy(), 16000)
    auto = small.enhance_file(str(tmp_path / "long.wav"))
    assert torch.equal(auto, small.enhance_file(str(tmp_path / "long.wav"), chunk_seconds=4.0))
    assert not torch.equal(auto, small.enhance_file(str(tmp_path / "long.wav"), chunk_seconds=None))


def test_doctests():
    from speechbrain_ext import convert
    from speechbrain_ext.inference import enhancement

    run_doctests((gan_module, None), (convert, "mossformer_gan"), (enhancement, "MossFormerGAN"))

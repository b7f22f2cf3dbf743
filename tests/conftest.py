"""Shared fixtures: the reference (ModelScope) models with seeded random weights, and small
SpeechBrain-format model folders of ours for the file-handling tests.

The reference package is a test dependency: it is the oracle the parity tests compare with.
"""

import pytest
import torch

from speechbrain_ext.lobes.models.frcrn import FRCRN
from speechbrain_ext.lobes.models.mossformer import MossFormer

OFFICIAL_FRCRN_KWARGS = dict(
    complex=True,
    model_complexity=45,
    model_depth=14,
    log_amp=False,
    padding_mode="zeros",
    win_len=640,
    win_inc=320,
    fft_len=640,
    win_type="hann",
)


@pytest.fixture
def two_threads():
    """Run as on the 2-core CI machine; restore the setting for other test files (use it with
    ``pytestmark = pytest.mark.usefixtures("two_threads")``)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


def assert_close_to_peak(ours, theirs, bound=1e-4):
    """max |ours - theirs| <= ``bound`` times the peak of ``theirs``."""
    relative = ((ours - theirs).abs().max() / theirs.abs().max()).item()
    assert relative <= bound, f"max |difference| {relative:.2e} of the peak"


def run_doctests(*targets):
    """Run the docstring Examples of each ``(module, only)`` target (``only``: a substring the
    example's name must hold, or None for all); every module must have some and all must pass."""
    import doctest

    for module, only in targets:
        finder, runner = doctest.DocTestFinder(), doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
        for test in finder.find(module):
            if only is None or only in test.name:
                runner.run(test)
        results = runner.summarize(verbose=False)
        assert results.attempted > 0 and results.failed == 0


def gradients_as_model(model):
    """A copy of ``model`` whose parameters hold its gradients (frozen ones keep their values),
    so that a converter can name the gradients as it names the weights."""
    import copy

    clone = copy.deepcopy(model)
    with torch.no_grad():
        for parameter, original in zip(clone.parameters(), model.parameters()):
            if original.grad is not None:
                parameter.copy_(original.grad)
    return clone


def randomize_(module, seed):
    """Perturb every learned tensor and give batch norms non-trivial running statistics.

    Fixed STFT kernels (stored as frozen parameters by the reference) are left alone.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if not param.requires_grad:
                continue
            # Constant tensors (norm gains, zero biases) get perturbed too, on a unit scale.
            std = param.std() if param.numel() > 1 else torch.tensor(0.0)
            scale = std if std > 0 else torch.tensor(1.0)
            param.add_(0.1 * scale * torch.randn(param.shape, generator=generator))
        for sub in module.modules():
            if isinstance(sub, torch.nn.modules.batchnorm._BatchNorm):
                sub.running_mean.copy_(0.1 * torch.randn(sub.running_mean.shape, generator=generator))
                sub.running_var.uniform_(0.5, 2.0, generator=generator)
                sub.num_batches_tracked.fill_(1000)
    return module


def make_reference_frcrn(seed=0):
    """The reference FRCRN (official configuration) with seeded random weights, in eval mode."""
    from modelscope.models.audio.ans.frcrn import FRCRN as ReferenceFRCRN

    torch.manual_seed(seed)
    return randomize_(ReferenceFRCRN(**OFFICIAL_FRCRN_KWARGS), seed).eval()


@pytest.fixture(scope="session")
def reference_frcrn():
    return make_reference_frcrn(seed=0)


OFFICIAL_MOSSFORMER_KWARGS = dict(
    num_spks=2, kernel_size=16, in_channels=512, out_channels=512, stride=8, bias=False,
    num_blocks=24, d_model=512, attn_dropout=0.1, group_size=256, query_key_dim=128,
    expansion_factor=4.0, causal=False, norm="ln",
)


def make_reference_mossformer(directory, seed=0, **overrides):
    """The reference MossFormer with seeded random weights (eval mode), saved in ModelScope's
    three-file layout (encoder.bin, masknet.bin, decoder.bin) under ``directory``."""
    import os

    from modelscope.models.audio.separation.mossformer import MossFormer as ReferenceMossFormer

    torch.manual_seed(seed)
    model = randomize_(ReferenceMossFormer(str(directory), **{**OFFICIAL_MOSSFORMER_KWARGS, **overrides}), seed)
    os.makedirs(directory, exist_ok=True)
    for filename, module in model.as_dict().items():
        torch.save(module.state_dict(), os.path.join(directory, f"{filename}.bin"))
    return model.eval()


SMALL_FRCRN_CARD = """
sample_rate: 16000
model: !new:speechbrain_ext.lobes.models.frcrn.FRCRN
    channels: 8
    fsmn_hidden: 8
modules:
    model: !ref <model>
pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer
    loadables:
        model: !ref <model>
"""

SMALL_MOSSFORMER_CARD = """
sample_rate: 8000
num_spks: 2
encoder: !new:speechbrain_ext.lobes.models.mossformer.MossFormerEncoder
    out_channels: 32
masknet: !new:speechbrain_ext.lobes.models.mossformer.MossFormerMaskNet
    in_channels: 32
    out_channels: 32
    num_blocks: 1
    group_size: 16
    query_key_dim: 16
decoder: !new:speechbrain_ext.lobes.models.mossformer.MossFormerDecoder
    in_channels: 32
modules:
    encoder: !ref <encoder>
    masknet: !ref <masknet>
    decoder: !ref <decoder>
pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer
    loadables:
        encoder: !ref <encoder>
        masknet: !ref <masknet>
        decoder: !ref <decoder>
"""


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    """Small SpeechBrain-format model folders (random weights) for both tasks."""
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    frcrn = root / "frcrn"
    frcrn.mkdir()
    (frcrn / "hyperparams.yaml").write_text(SMALL_FRCRN_CARD)
    torch.save(FRCRN(channels=8, fsmn_hidden=8).state_dict(), frcrn / "model.ckpt")
    moss = root / "mossformer"
    moss.mkdir()
    (moss / "hyperparams.yaml").write_text(SMALL_MOSSFORMER_CARD)
    model = MossFormer(in_channels=32, out_channels=32, num_blocks=1, d_model=32, group_size=16, query_key_dim=16)
    for name in ("encoder", "masknet", "decoder"):
        torch.save(getattr(model, name).state_dict(), moss / f"{name}.ckpt")
    return {"enhance": frcrn, "separate": moss}


def make_reference_mossformer2(dim=64, num_blocks=2, num_spks=2, seed=0):
    """ClearerVoice-Studio's MossFormer2 separator (``MossFormer2_SS_16K(args).model``) of the given
    width and depth, every tensor randomly perturbed (so that identity-initialised norms, gains
    and PReLU slopes are exercised), in eval mode. The official size is dim 512, 24 blocks."""
    import argparse

    from clearvoice.models.mossformer2_ss.mossformer2 import MossFormer2_SS_16K

    torch.manual_seed(seed)
    args = argparse.Namespace(num_spks=num_spks, encoder_kernel_size=16, encoder_embedding_dim=dim,
                              mossformer_sequence_dim=dim, num_mossformer_layer=num_blocks)
    return perturb_(MossFormer2_SS_16K(args).model, seed + 1)


def mossformer2_kwargs(dim=64, num_blocks=2, num_spks=2):
    """Our MossFormer2's arguments for :func:`make_reference_mossformer2`'s sizes."""
    return dict(in_channels=dim, out_channels=dim, d_model=dim, num_blocks=num_blocks, num_spks=num_spks)


def perturb_(model, seed):
    """Every tensor of ``model`` randomly perturbed (q/k scales redrawn so that the attention
    matters); returns it in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            noise = torch.randn(tensor.shape, generator=generator)
            if name.endswith("qk_offset_scale.gamma"):
                tensor.copy_(noise)
            elif name.endswith("qk_offset_scale.beta"):
                tensor.copy_(0.1 * noise)
            else:
                tensor.mul_(1 + 0.3 * noise).add_(0.02 * torch.randn(tensor.shape, generator=generator))
    return model.eval()


def make_reference_mossformer2_se(seed=0):
    """ClearerVoice-Studio's MossFormer2_SE_48K network (``MossFormer2_SE_48K(args).model``, its
    only size), every tensor randomly perturbed, in eval mode."""
    import argparse

    from clearvoice.models.mossformer2_se.mossformer2_se_wrapper import MossFormer2_SE_48K

    torch.manual_seed(seed)
    return perturb_(MossFormer2_SE_48K(argparse.Namespace()).model, seed + 1)


#: ClearVoice's own arguments for MossFormerGAN_SE_16K (its config/inference/MossFormerGAN_SE_16K.yaml).
MOSSFORMER_GAN_ARGS = dict(mode="inference", sampling_rate=16000, one_time_decode_length=10, decode_window=10,
                           win_type="hamming", win_len=400, win_inc=100, fft_len=400)


def make_reference_mossformer_gan(seed=0):
    """ClearerVoice-Studio's MossFormerGAN_SE_16K generator (``MossFormerGAN_SE_16K(args).model``,
    its only size), every tensor randomly perturbed, in eval mode."""
    import argparse

    from clearvoice.models.mossformer_gan_se.generator import MossFormerGAN_SE_16K

    torch.manual_seed(seed)
    return perturb_(MossFormerGAN_SE_16K(argparse.Namespace(**MOSSFORMER_GAN_ARGS)).model, seed + 1)

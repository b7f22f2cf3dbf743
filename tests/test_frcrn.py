"""FRCRN: numerical parity with the reference, official checkpoint conversion, training."""

import pytest
import torch
from hyperpyyaml import load_hyperpyyaml

from speechbrain_ext.convert import CheckpointMismatchError, frcrn_from_official, frcrn_to_official
from speechbrain_ext.lobes.models.frcrn import FRCRN, ComplexConvBlock, frcrn_loss
from speechbrain_ext.nnet.complex import ComplexBatchNorm2d, ComplexConv2d, ComplexConvTranspose2d
from speechbrain_ext.nnet.fsmn import ComplexFSMN
from speechbrain_ext.nnet.fused import FusedComplexConvBlock, FusedComplexFSMN
from speechbrain_ext.nnet.stft import FramedISTFT, FramedSTFT

from conftest import OFFICIAL_FRCRN_KWARGS, make_reference_frcrn

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def official_file(reference_frcrn, tmp_path_factory):
    """The reference's random weights saved as a ModelScope ``pytorch_model.bin``."""
    path = tmp_path_factory.mktemp("modelscope") / "pytorch_model.bin"
    torch.save(reference_frcrn.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def ours(official_file):
    return frcrn_from_official(official_file)


@pytest.fixture(scope="module")
def ours_fused(official_file):
    """The same weights with the fused inference kernels (what EnhanceFRCRN runs)."""
    return frcrn_from_official(official_file).fuse_for_inference()


def noisy_batch(batch, length, seed):
    generator = torch.Generator().manual_seed(seed)
    return 0.1 * torch.randn(batch, length, generator=generator)


@pytest.mark.parametrize("length", [1000, 16000, 37123])
def test_parity_with_reference(reference_frcrn, ours, length):
    noisy = noisy_batch(3, length, seed=length)
    with torch.inference_mode():
        ref = reference_frcrn(noisy)
        first, final = ours.forward_stages(noisy)
        enhanced = ours(noisy)
    ref_len = ref[4].shape[-1]
    assert ref_len < length or length == 16000  # odd lengths leave a partial frame
    assert (final.wav - ref[4]).abs().max() <= TOLERANCE
    assert (first.wav - ref[1]).abs().max() <= TOLERANCE
    # Masks and spectra: ours [B, 2, F, N] vs the reference's [B, 2F, N] (real rows, then imag).
    assert (final.mask.flatten(1, 2) - ref[5]).abs().max() <= TOLERANCE
    assert (first.mask.flatten(1, 2) - ref[2]).abs().max() <= TOLERANCE
    # Spectra sum 640 samples per bin: compare them relative to their magnitude.
    assert (final.spec.flatten(1, 2) - ref[3]).abs().max() <= TOLERANCE * ref[3].abs().max().clamp(min=1)
    # forward() returns the input length: the reconstructed part, then zeros.
    assert enhanced.shape == noisy.shape
    assert torch.equal(enhanced[:, :ref_len], final.wav)
    assert not enhanced[:, ref_len:].any()


@pytest.mark.parametrize("length", [1000, 37123])
def test_fused_model_has_parity_with_reference(reference_frcrn, ours_fused, length):
    noisy = noisy_batch(2, length, seed=length + 1)
    with torch.inference_mode():
        ref = reference_frcrn(noisy)
        first, final = ours_fused.forward_stages(noisy)
    assert (final.wav - ref[4]).abs().max() <= TOLERANCE
    assert (final.mask.flatten(1, 2) - ref[5]).abs().max() <= TOLERANCE
    assert sorted(ours_fused.state_dict()) == sorted(FRCRN().state_dict())  # the same checkpoint keys
    with pytest.raises(RuntimeError, match="for inference only"):
        ours_fused.train()


def test_batch_items_are_independent(ours):
    noisy = noisy_batch(3, 8000, seed=5)
    with torch.inference_mode():
        together = ours(noisy)
        alone = ours(noisy[1:2])
    assert (together[1:2] - alone).abs().max() <= TOLERANCE


def test_clearervoice_checkpoint_with_module_prefix(reference_frcrn, ours, tmp_path):
    wrapped = {
        "model": {f"module.{k}": v for k, v in reference_frcrn.state_dict().items()},
        "optimizer": {},
        "epoch": 88,
        "step": 8491630,
    }
    path = tmp_path / "model.ckpt-88-8491630.pt"
    torch.save(wrapped, path)
    loaded = frcrn_from_official(path)
    for name, tensor in ours.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name


def test_round_trip_loads_strictly_into_reference(ours):
    reference = make_reference_frcrn(seed=1)  # different weights, overwritten below
    reference.load_state_dict(frcrn_to_official(ours), strict=True)
    noisy = noisy_batch(2, 12345, seed=3)
    with torch.inference_mode():
        assert (reference(noisy)[4] - ours.forward_stages(noisy)[1].wav).abs().max() <= TOLERANCE
    # And back again: the exported checkpoint converts to the same model.
    again = frcrn_from_official(frcrn_to_official(ours))
    for name, tensor in ours.state_dict().items():
        assert torch.equal(again.state_dict()[name], tensor), name


def test_only_list_spelling_of_aliases_is_enough(reference_frcrn, ours):
    state = {k: v for k, v in reference_frcrn.state_dict().items() if ".encoder3." not in k}
    assert "unet.encoders.3.conv.conv_re.weight" in state
    loaded = frcrn_from_official(state)
    assert torch.equal(
        loaded.state_dict()["stage1.encoders.3.conv.weight_real"],
        ours.state_dict()["stage1.encoders.3.conv.weight_real"],
    )


def test_rejects_missing_tensor(reference_frcrn):
    state = dict(reference_frcrn.state_dict())
    for name in ("unet2.fsmn_dec2.fsmn_im_L1.project.weight", "unet2.fsmn_dec.2.fsmn_im_L1.project.weight"):
        del state[name]
    with pytest.raises(CheckpointMismatchError, match=r"missing 1 tensor.*unet2\.fsmn_dec2\.fsmn_im_L1\.project\.weight"):
        frcrn_from_official(state)


def test_rejects_unexpected_tensor(reference_frcrn):
    state = dict(reference_frcrn.state_dict())
    state["unet.encoder9.conv.conv_re.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointMismatchError, match=r"unexpected 1 tensor.*unet\.encoder9\.conv\.conv_re\.weight"):
        frcrn_from_official(state)


def test_rejects_wrong_shape(reference_frcrn):
    state = dict(reference_frcrn.state_dict())
    state["unet.linear.conv_re.weight"] = torch.zeros(1, 1, 3, 3)
    with pytest.raises(CheckpointMismatchError, match=r"wrong shape: unet\.linear\.conv_re\.weight"):
        frcrn_from_official(state)


def test_rejects_conflicting_aliases(reference_frcrn):
    state = dict(reference_frcrn.state_dict())
    state["unet.encoders.1.bn.bn_re.bias"] = state["unet.encoder1.bn.bn_re.bias"] + 1
    with pytest.raises(CheckpointMismatchError, match="aliases"):
        frcrn_from_official(state)


def test_rejects_other_stft_configuration(reference_frcrn):
    state = dict(reference_frcrn.state_dict())
    with pytest.raises(CheckpointMismatchError, match="stft.weight"):
        frcrn_from_official(state, win_type="hamming")


def test_rejects_non_checkpoints(tmp_path):
    junk = tmp_path / "pytorch_model.bin"
    junk.write_text("not a checkpoint")
    with pytest.raises(CheckpointMismatchError, match="not a readable PyTorch checkpoint"):
        frcrn_from_official(junk)
    with pytest.raises(FileNotFoundError):
        frcrn_from_official(tmp_path / "absent.bin")


def test_hanning_is_hann():
    torch.manual_seed(0)
    hann = FRCRN(channels=8, fsmn_hidden=8, win_type="hann").eval()
    hanning = FRCRN(channels=8, fsmn_hidden=8, win_type="hanning").eval()
    hanning.load_state_dict(hann.state_dict())
    noisy = noisy_batch(1, 4000, seed=0)
    with torch.inference_mode():
        assert torch.equal(hann(noisy), hanning(noisy))


@pytest.mark.parametrize("win_len,win_inc,fft_len", [(640, 320, 640), (400, 100, 512)])
def test_stft_pair_matches_reference(win_len, win_inc, fft_len):
    from modelscope.models.audio.ans.conv_stft import ConviSTFT, ConvSTFT

    wav = noisy_batch(2, 9001, seed=1)
    ref_stft = ConvSTFT(win_len, win_inc, fft_len, "hann", feature_type="complex")
    ref_istft = ConviSTFT(win_len, win_inc, fft_len, "hann", feature_type="complex")
    ours_stft = FramedSTFT(win_len, win_inc, fft_len, "hann")
    ours_istft = FramedISTFT(win_len, win_inc, fft_len, "hann")
    spec = ours_stft(wav)
    assert (spec.flatten(1, 2) - ref_stft(wav)).abs().max() <= TOLERANCE
    # A spectrum that no signal has (like a masked one) exercises the least-squares inverse.
    arbitrary = torch.randn_like(spec)
    expected = ref_istft(arbitrary.flatten(1, 2)).squeeze(1)
    assert (ours_istft(arbitrary) - expected).abs().max() <= TOLERANCE * expected.abs().max()


def test_complex_convolutions_are_complex_products():
    torch.manual_seed(0)
    conv = ComplexConv2d(3, 4, (3, 2), padding=(1, 0))
    tconv = ComplexConvTranspose2d(4, 3, (3, 2), stride=(2, 1))
    x = torch.randn(2, 6, 9, 5)

    def as_complex(t):
        real, imag = t.chunk(2, dim=1)
        return torch.complex(real, imag)

    weight = torch.complex(conv.weight_real, conv.weight_imag)
    bias = torch.complex(conv.bias_real - conv.bias_imag, conv.bias_real + conv.bias_imag)
    expected = torch.nn.functional.conv2d(as_complex(x), weight, bias, padding=(1, 0))
    assert torch.allclose(as_complex(conv(x)), expected, atol=1e-5)

    y = conv(x)
    tweight = torch.complex(tconv.weight_real, tconv.weight_imag)
    tbias = torch.complex(tconv.bias_real - tconv.bias_imag, tconv.bias_real + tconv.bias_imag)
    expected = torch.nn.functional.conv_transpose2d(as_complex(y), tweight, tbias, stride=(2, 1))
    assert torch.allclose(as_complex(tconv(y)), expected, atol=1e-5)


@pytest.mark.parametrize("axis", ["freq", "time"])
def test_fused_fsmn_equals_the_plain_fsmn(axis):
    """The fused complex FSMN (in place; along frequency, long maps in pieces): the same function."""
    torch.manual_seed(0)
    layer = ComplexFSMN(32, 16, memory_order=5, axis=axis).eval()
    # Long enough to be split into pieces (see speechbrain_ext.nnet.fused.PIECE_ELEMENTS).
    x = torch.randn(2, 64, 37, 1500).contiguous(memory_format=torch.channels_last)
    plain = layer(x)
    with torch.inference_mode():
        fused = FusedComplexFSMN(layer)(x)
    assert fused.shape == plain.shape
    assert (fused - plain).abs().max() <= 1e-4 * plain.abs().max()


@pytest.mark.parametrize(
    "conv",
    [
        ComplexConv2d(1, 16, (5, 2), stride=(2, 1), padding=(0, 1)),  # unfold + matmul
        ComplexConv2d(16, 16, (5, 2), stride=(2, 1), padding=(0, 1)),  # Gauss product, folded norm
        ComplexConv2d(16, 16, (5, 2), stride=(2, 1), causal=True),
        ComplexConv2d(16, 16, (5, 2), stride=(2, 1), padding=(2, 1), padding_mode="reflect"),
        ComplexConvTranspose2d(32, 16, (5, 2), stride=(2, 1), padding=(0, 1)),  # in pieces
        ComplexConvTranspose2d(32, 1, (5, 2), stride=(2, 1), padding=(0, 1)),  # matmul + fold
        ComplexConvTranspose2d(16, 16, (5, 2), stride=(2, 1), causal=True),
    ],
    ids=["conv-few-inputs", "conv", "conv-causal", "conv-reflect", "tconv", "tconv-few-outputs", "tconv-causal"],
)
def test_fused_blocks_equal_the_plain_blocks(conv):
    """conv -> batch norm -> leaky ReLU, and its fused inference kernel: the same function."""
    torch.manual_seed(0)
    in_channels = conv.weight_real.shape[0 if isinstance(conv, ComplexConvTranspose2d) else 1]
    out_channels = conv.weight_real.shape[1 if isinstance(conv, ComplexConvTranspose2d) else 0]
    norm = ComplexBatchNorm2d(out_channels)
    norm.running_mean.normal_()
    norm.running_var.uniform_(0.5, 1.5)
    norm.weight.data.uniform_(0.5, 1.5)
    norm.eval()
    # Long enough to be split into pieces (see speechbrain_ext.nnet.fused.PIECE_ELEMENTS).
    x = torch.randn(2, 2 * in_channels, 37, 1500).contiguous(memory_format=torch.channels_last)
    plain = torch.nn.functional.leaky_relu(norm(conv(x)), 0.01)
    with torch.inference_mode():
        fused = FusedComplexConvBlock(conv, norm)(x)
    assert fused.shape == plain.shape
    assert (fused - plain).abs().max() <= 1e-4 * plain.abs().max()


def test_loss_matches_reference(reference_frcrn, ours):
    length = 15 * 320 + 640  # a whole number of frames, as training segments are
    noisy, clean = noisy_batch(2, length, seed=7), noisy_batch(2, length, seed=8)
    with torch.no_grad():
        ref = reference_frcrn.loss(noisy, clean, reference_frcrn(noisy), mode="Mix")
        losses = frcrn_loss(ours, ours.forward_stages(noisy), noisy, clean)
    for name in ("loss", "amp_loss", "phase_loss"):
        assert abs(losses[name].item() - ref[name].item()) <= 1e-4 * max(1.0, abs(ref[name].item())), name
    # The recipes' mask_loss_weight scales the mask terms only; their parts stay unweighted.
    with torch.no_grad():
        weighted = frcrn_loss(ours, ours.forward_stages(noisy), noisy, clean, mask_weight=0.05)
    expected = losses["sisnr_loss"] + 0.05 * (losses["amp_loss"] + losses["phase_loss"])
    assert torch.allclose(weighted["loss"], expected, rtol=1e-5)
    assert torch.allclose(weighted["amp_loss"], losses["amp_loss"]) and weighted["loss"] < losses["loss"]


@pytest.mark.parametrize("causal", [False, True], ids=["offline", "causal"])
def test_gradient_step_lowers_the_loss(causal):
    torch.manual_seed(0)
    model = FRCRN(channels=8, fsmn_hidden=8, fsmn_order=4, causal=causal)
    length = 24 * 320 + 640
    clean = torch.sin(torch.arange(length) * 0.07).repeat(2, 1) * 0.3
    noisy = clean + 0.1 * noisy_batch(2, length, seed=1)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    history = []
    for _ in range(8):
        loss = frcrn_loss(model, model.forward_stages(noisy), noisy, clean)["loss"]
        optimizer.zero_grad()
        loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
        optimizer.step()
        history.append(loss.item())
    assert history[-1] < history[0] - 0.5


def test_bad_inputs_raise_clear_errors():
    model = FRCRN(channels=8, fsmn_hidden=8)
    with pytest.raises(ValueError, match="at least one frame"):
        model(torch.zeros(1, 100))
    with pytest.raises(ValueError, match=r"\[batch, time\]"):
        model(torch.zeros(16000))
    with pytest.raises(ValueError, match="model_depth=14"):
        FRCRN(model_depth=20)
    with pytest.raises(ValueError, match="fft_len=640"):
        FRCRN(fft_len=512)


def test_hparams_define_the_official_model():
    with open("hparams/frcrn.yaml") as stream:
        hparams = load_hyperpyyaml(stream)
    model = hparams["model"]
    assert isinstance(model, FRCRN) and hparams["modules"]["model"] is model
    # Every official tensor is used: 12,824,276 trainable parameters (the reference's
    # 13,141,844 include 317,568 in modules it registers but never runs).
    assert sum(p.numel() for p in model.parameters()) == 12_824_276
    with open("hparams/frcrn.yaml") as stream:
        small = load_hyperpyyaml(stream, {"channels": 16, "fsmn_hidden": 16})["model"]
    assert sum(p.numel() for p in small.parameters()) < 500_000


def test_official_kwargs_construct():
    assert isinstance(FRCRN(**OFFICIAL_FRCRN_KWARGS), FRCRN)


def test_training_gradients_match_reference():
    """One training step's gradients (train mode, batch statistics, the official loss) are the
    reference's for every parameter: the training routes compute the reference's function.

    In float64: in float32 the two differ by up to 1e-1 of a tensor's gradient scale (as much
    before the training routes changed as after), rounding differences amplified through 14
    levels of train-mode batch norm over a few bins of a short batch. The noise is mild so that no target-mask element sits near the official clamp at
    +-2, where a change in the last bit of the STFT would switch the target."""
    from speechbrain_ext.convert import _frcrn_official_names

    reference = make_reference_frcrn(seed=3).train().double()
    ours = frcrn_from_official(reference.state_dict()).train().double()
    length = 9 * 320 + 640
    clean = noisy_batch(2, length, seed=4).double()
    noisy = clean + 0.1 * noisy_batch(2, length, seed=5).double()
    reference.loss(noisy, clean, reference(noisy), mode="Mix")["loss"].backward()
    frcrn_loss(ours, ours.forward_stages(noisy), noisy, clean)["loss"].backward()
    largest = max(p.grad.abs().max() for p in ours.parameters())
    worst, checked = 0.0, 0
    for name, parameter in ours.named_parameters():
        official = [reference.get_parameter(n).grad for n in _frcrn_official_names(name)]
        expected = torch.cat([g.reshape(-1) for g in official]).view_as(parameter)
        if ".conv.bias_" in name:
            # A bias before a train-mode batch norm has a zero gradient (the norm removes it):
            # both sides hold rounding noise only.
            assert parameter.grad.abs().max() <= 1e-5 * largest and expected.abs().max() <= 1e-5 * largest
            continue
        worst = max(worst, ((parameter.grad - expected).abs().max() / expected.abs().max()).item())
        checked += 1
    assert checked > 250
    assert worst <= TOLERANCE, f"largest gradient difference {worst:.2e} of the gradient's scale"


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("length", [1, 4, 9, 16])  # shorter than the filter, as long, up to the matrix route's end
def test_causal_filter_matrix_route_equals_the_convolution_with_gradients(dim, length):
    """FSMN memory filters: the banded-Toeplitz product (short sequences) gives the causal
    convolution's output and gradients."""
    from speechbrain_ext.nnet.fsmn import causal_filter

    x = torch.randn(2, 3, 16, 16, dtype=torch.double)
    x = x.narrow(dim, 0, length).contiguous()
    filters = torch.randn(3, 4, dtype=torch.double)
    upstream = torch.randn_like(x)
    results = []
    for matrix_filter in (True, False):
        inputs, taps = x.clone().requires_grad_(), filters.clone().requires_grad_()
        out = causal_filter(inputs, taps, dim, matrix_filter=matrix_filter)
        out.backward(upstream)
        results.append((out.detach(), inputs.grad, taps.grad))
    for matrix, convolution in zip(*results):
        torch.testing.assert_close(matrix, convolution, rtol=1e-12, atol=1e-12)

"""MossFormer: parity with the reference implementation (ModelScope) and checkpoint conversion.

The reference is only an oracle here: it is built with seeded random weights (every tensor
perturbed, so identity-initialised norms and gains are exercised), saved in the official
three-file layout, and our model is loaded from those files through the converter.
"""

import copy
import json
import os

import pytest
import torch
import torch.nn.functional as F
from hyperpyyaml import load_hyperpyyaml

from speechbrain_ext import convert
from speechbrain_ext.convert import (
    CheckpointMismatchError,
    mossformer_from_official,
    mossformer_to_official,
)
from speechbrain_ext.evaluation import metrics
from speechbrain_ext.lobes.models import mossformer as mossformer_module
from speechbrain_ext.lobes.models.mossformer import MossFormer

from modelscope.models.audio.separation import mossformer as reference  # the parity oracle

from conftest import perturb_, run_doctests

pytestmark = pytest.mark.usefixtures("two_threads")  # as on the 2-core CI machine

HPARAMS = os.path.join(os.path.dirname(__file__), "..", "hparams", "mossformer.yaml")

OFFICIAL = dict(
    num_spks=2, kernel_size=16, in_channels=512, out_channels=512, stride=8, bias=False,
    num_blocks=24, d_model=512, attn_dropout=0.1, group_size=256, query_key_dim=128,
    expansion_factor=4.0, causal=False, norm="ln",
)
SMALL = dict(OFFICIAL, in_channels=64, out_channels=64, d_model=64, num_blocks=2, group_size=16, query_key_dim=32)
PARTS = {"encoder": "encoder", "masknet": "mask_net", "decoder": "decoder"}

# Lengths in samples: neither a multiple of the stride (8) nor, in frames, of the group size
# (16 in SMALL), and one that is both (160 frames = 10 groups), so that both the partial-group
# path and the plain one run.
ODD_LENGTHS = (1237, 4001)
ALIGNED_LENGTH = 159 * 8 + 16




def build_reference(config, directory, seed=0):
    """The reference MossFormer with every official tensor randomly perturbed, in eval mode."""
    torch.manual_seed(seed)
    return perturb_(reference.MossFormer(str(directory), **config), seed + 1)


def save_official(model, directory):
    """Writes the reference's modules as ModelScope's encoder.bin, masknet.bin, decoder.bin."""
    os.makedirs(directory, exist_ok=True)
    for filename, attribute in PARTS.items():
        torch.save(getattr(model, attribute).state_dict(), os.path.join(directory, f"{filename}.bin"))
    return directory


def mixtures(batch, length, seed=0):
    return 0.3 * torch.randn(batch, length, generator=torch.Generator().manual_seed(seed))


def si_snr(estimate, target):
    """SI-SNR in dB of ``estimate`` against ``target``, both [B, T, S]: one value per source."""
    # A tiny eps: untrained models' outputs are quiet, and the guard must not cap the score.
    return metrics.si_snr(estimate.transpose(1, 2), target.transpose(1, 2), eps=1e-20)


def assert_parity(ours, theirs):
    assert ours.shape == theirs.shape
    max_error = (ours - theirs).abs().max().item()
    worst_si_snr = si_snr(ours.double(), theirs.double()).min().item()
    assert max_error <= 1e-3, f"max |difference| {max_error:.2e}"
    assert worst_si_snr >= 50, f"SI-SNR {worst_si_snr:.1f} dB"
    return max_error, worst_si_snr


@pytest.fixture(scope="module")
def small_pair(tmp_path_factory):
    """(reference, ours, official directory) for the SMALL configuration."""
    directory = tmp_path_factory.mktemp("mossformer_small")
    theirs = build_reference(SMALL, directory)
    save_official(theirs, directory)
    return theirs, mossformer_from_official(directory, **SMALL), directory


@pytest.mark.parametrize("length", ODD_LENGTHS + (ALIGNED_LENGTH,))
def test_parity_small(small_pair, length):
    theirs, ours, _ = small_pair
    mix = mixtures(2, length)
    with torch.inference_mode():
        assert_parity(ours(mix), theirs(mix))


@pytest.mark.parametrize(
    "variant",
    [dict(causal=True), dict(norm="gln"), dict(norm="cln"), dict(num_spks=3), dict(bias=True)],
    ids=lambda variant: "-".join(f"{k}={v}" for k, v in variant.items()),
)
def test_parity_variants(tmp_path, variant):
    config = dict(SMALL, **variant)
    theirs = build_reference(config, tmp_path, seed=3)
    ours = mossformer_from_official(save_official(theirs, tmp_path), **config)
    for length in ODD_LENGTHS:
        mix = mixtures(2, length, seed=length)
        with torch.inference_mode():
            assert_parity(ours(mix), theirs(mix))


def test_parity_official_size(tmp_path):
    """The official architecture (24 blocks of 512) on 0.5 s of 8 kHz audio, batch 2."""
    theirs = build_reference(OFFICIAL, tmp_path, seed=7)
    save_official(theirs, tmp_path)
    assert len(torch.load(tmp_path / "masknet.bin", weights_only=True)) == 377
    with open(tmp_path / "configuration.json", "w") as file:
        json.dump({"framework": "pytorch", "task": "speech-separation",
                   "model": {"type": "speech_mossformer_separation_temporal_8k", **OFFICIAL}}, file)

    ours = mossformer_from_official(tmp_path)
    assert sum(p.numel() for p in ours.parameters()) == 42_101_850
    mix = mixtures(2, 4003)  # 499 frames: one full group of 256 and a partial one
    with torch.inference_mode():
        expected = theirs(mix)
        assert_parity(ours(mix), expected)
        assert_parity(ours.fuse_for_inference()(mix), expected)  # the interfaces' route


def test_fused_for_inference_matches_the_plain_model(small_pair):
    """The in-place gating of fuse_for_inference and the plain (autograd) path compute the same."""
    _, ours, _ = small_pair
    mix = mixtures(1, ODD_LENGTHS[0])
    fused = copy.deepcopy(ours).fuse_for_inference()
    with torch.inference_mode():
        fast = fused(mix)
    assert torch.allclose(ours(mix), fast, atol=1e-6)
    assert not any(block.inplace_gating for block in fused.train().masknet.blocks)  # train() undoes it


@pytest.mark.parametrize("piece_elements", [1, 7 * 16, 1 << 19], ids=["row", "pieces", "default"])
def test_in_place_gating_by_pieces_equals_the_plain_gating(monkeypatch, piece_elements):
    # Pieces of one row, of 7 rows (a shorter last piece) and whole items: the numbers of the
    # same in-place operations on whole tensors, and of the plain formula up to rounding.
    monkeypatch.setattr(mossformer_module, "GATING_PIECE_ELEMENTS", piece_elements)
    torch.manual_seed(0)
    attended, hidden = torch.randn(2, 2, 30, 16).unbind(0)
    v, u = hidden.chunk(2, dim=-1)
    attended_v, attended_u = attended.clone().chunk(2, dim=-1)
    plain = attended_u * v * torch.sigmoid(attended_v * u)
    whole = attended_u.mul_(v).mul_(attended_v.mul_(u).sigmoid_())
    gated = mossformer_module._gate_in_place_(attended, hidden)
    assert gated.data_ptr() == attended[..., 8:].data_ptr()  # inside the attention output
    assert torch.equal(gated, whole) and torch.allclose(gated, plain, atol=1e-6)


def test_gated_attention_by_groups_equals_the_plain_route():
    # The fused CPU route (oneDNN products, one group at a time, gated into a new tensor) against
    # the joint attention and the block's gating as autograd runs them: batch 2, 2 whole groups
    # of 16 frames and a partial one of 5.
    torch.manual_seed(0)
    quad_q, quad_k, lin_q, lin_k = torch.randn(4, 2, 37, 8).unbind(0)
    hidden = torch.randn(2, 37, 24)
    attended = mossformer_module.relu2_local_global_attention(quad_q, quad_k, lin_q, lin_k, hidden, 16)
    v, u = hidden.chunk(2, dim=-1)
    attended_v, attended_u = attended.chunk(2, dim=-1)
    expected = attended_u * v * torch.sigmoid(attended_v * u)
    with torch.inference_mode():
        gated = mossformer_module._gated_attention_by_groups(quad_q, quad_k, lin_q, lin_k, hidden, 16)
    assert gated.shape == (2, 37, 12) and gated.is_contiguous()
    assert torch.allclose(gated, expected, atol=1e-5)


def test_linear_takes_onednn_only_when_no_operand_needs_a_gradient():
    """oneDNN's linear has no backward: a bias that needs a gradient (the input and weight
    frozen) keeps ``F.linear``, even for a prepacked module; an unknown activation is refused
    on every route."""
    x, weight = torch.randn(5, 8), torch.randn(4, 8)
    bias = torch.randn(4, requires_grad=True)
    out = mossformer_module._linear(x, weight, bias, "relu", prepacked=True)
    out.sum().backward()
    assert torch.equal(bias.grad, (out > 0).sum(0).float())
    with torch.no_grad():
        fast = mossformer_module._linear(x, weight, bias, "swish", prepacked=True)
    assert torch.allclose(fast, F.silu(F.linear(x, weight, bias)), atol=1e-5)
    with pytest.raises(ValueError, match="activation"):
        mossformer_module._linear(x, weight, None, "gelu")


def test_prepacked_weights_follow_the_parameters(small_pair, tmp_path):
    """A fused model's oneDNN-layout weight copies give the unpacked products' numbers, are
    redone when the weights change after fusing, and never enter copies or saved models."""
    if not mossformer_module._onednn_linear_available():
        pytest.skip("this torch build has no oneDNN linear")  # then nothing is prepacked
    _, ours, directory = small_pair
    mix = mixtures(1, ODD_LENGTHS[0])
    fused = copy.deepcopy(ours).fuse_for_inference()
    with torch.inference_mode():
        packed = fused(mix)
        weight = fused.masknet.blocks[0].to_hidden.linear.weight
        assert id(weight) in mossformer_module._PREPACKED_WEIGHTS
        for block in fused.masknet.blocks:
            for feed_forward in (block.to_hidden, block.to_qk, block.to_out):
                feed_forward.prepacked = False
        assert torch.allclose(fused(mix), packed, atol=1e-6)
    # New weights loaded into the fused model are used, not the stale copies.
    other = mossformer_from_official(save_official(build_reference(SMALL, tmp_path, seed=11), tmp_path), **SMALL)
    fused = copy.deepcopy(ours).fuse_for_inference()
    with torch.inference_mode():
        fused(mix)
        fused.load_state_dict(other.state_dict())
        assert torch.allclose(fused(mix), other.eval()(mix), atol=1e-6)
    copy.deepcopy(fused)
    torch.save(fused, tmp_path / "fused.pt")  # no opaque oneDNN tensor inside the module
    cached = [id(p) for p in fused.parameters() if id(p) in mossformer_module._PREPACKED_WEIGHTS]
    assert len(cached) == 3 * SMALL["num_blocks"]  # to_hidden, to_qk, to_out of each block
    del fused, weight
    assert not set(cached) & set(mossformer_module._PREPACKED_WEIGHTS)  # the copies went with the model


@pytest.mark.parametrize("bias", [False, True])
def test_decoder_inference_route_equals_the_transposed_convolution(bias):
    from speechbrain.lobes.models.dual_path import Decoder

    decoder = mossformer_module.MossFormerDecoder(in_channels=32, kernel_size=16, stride=8, bias=bias)
    for shape in [(2, 32, 99), (1, 32, 99), (3, 32, 1)]:
        encoded = torch.randn(*shape)
        expected = Decoder.forward(decoder, encoded)  # autograd on: SpeechBrain's transposed conv
        with torch.inference_mode():
            decoded = decoder(encoded)
        assert decoded.shape == expected.shape == (shape[0], (shape[-1] - 1) * 8 + 16)
        assert torch.allclose(decoded, expected, atol=1e-6)


def test_gradients_match_reference(tmp_path):
    """Backward through our in-place updates gives the reference's gradients (no dropout)."""
    config = dict(SMALL, attn_dropout=0.0)
    theirs = build_reference(config, tmp_path, seed=5).train()
    ours = mossformer_from_official(save_official(theirs, tmp_path), **config).train()
    mix = mixtures(2, ODD_LENGTHS[0])
    projection = torch.randn(2, ODD_LENGTHS[0], 2, generator=torch.Generator().manual_seed(9))
    gradients = []
    for model in (ours, theirs):
        inputs = mix.clone().requires_grad_()
        (model(inputs) * projection).sum().backward()
        gradients.append(inputs.grad)
    assert torch.allclose(gradients[0], gradients[1], rtol=1e-4, atol=1e-5 * gradients[1].abs().max())
    first_block = ours.masknet.blocks[0].to_hidden.linear.weight.grad
    official = theirs.mask_net.mdl.att_mdl.mossformerM.layers[0].to_hidden.mdl[1].weight.grad
    assert torch.allclose(first_block, official, rtol=1e-4, atol=1e-5 * official.abs().max())


def test_round_trip_loads_strictly_into_reference(small_pair, tmp_path):
    theirs, ours, _ = small_pair
    official = mossformer_to_official(ours, tmp_path / "exported")
    assert {f.name for f in (tmp_path / "exported").iterdir()} == {
        "encoder.bin", "masknet.bin", "decoder.bin", "configuration.json"
    }
    rebuilt = reference.MossFormer(str(tmp_path), **SMALL).eval()
    for part, attribute in PARTS.items():
        getattr(rebuilt, attribute).load_state_dict(official[part], strict=True)
    # ModelScope's own loader reads the written files (it uses torch.load as the reference does).
    rebuilt.load_check_point(str(tmp_path / "exported"))

    again = mossformer_from_official(tmp_path / "exported")  # kwargs from configuration.json
    assert again.config == ours.config
    mix = mixtures(2, ODD_LENGTHS[1])
    with torch.inference_mode():
        expected = ours(mix)
        assert torch.equal(rebuilt(mix), theirs(mix))
        assert torch.equal(again(mix), expected)


def test_accepted_checkpoint_layouts(small_pair, tmp_path):
    theirs, ours, directory = small_pair
    files = {part: os.path.join(directory, f"{part}.bin") for part in PARTS}
    torch.save(theirs.state_dict(), tmp_path / "merged.pt")
    in_memory = {part: getattr(theirs, attribute).state_dict() for part, attribute in PARTS.items()}
    layouts = {
        "merged reference state dict": theirs.state_dict(),
        "merged with masknet. prefix": {k.replace("mask_net.", "masknet.", 1): v for k, v in theirs.state_dict().items()},
        "dict of state dicts": in_memory,
        "dict with mask_net key": {PARTS[part]: state for part, state in in_memory.items()},
        "dict of paths": files,
        "tuple": (in_memory["encoder"], in_memory["masknet"], in_memory["decoder"]),
        "training checkpoint": {"model": {f"module.{k}": v for k, v in theirs.state_dict().items()}},
        "merged file": str(tmp_path / "merged.pt"),
    }
    expected = ours.state_dict()
    for layout, checkpoint in layouts.items():
        loaded = mossformer_from_official(checkpoint, **SMALL).state_dict()
        assert loaded.keys() == expected.keys(), layout
        assert all(torch.equal(loaded[k], expected[k]) for k in expected), layout


def test_configuration_json_overrides_defaults(small_pair, tmp_path):
    theirs, _, _ = small_pair
    save_official(theirs, tmp_path)
    # A nested section and unknown keys are tolerated; explicit kwargs win over the file.
    model_section = {"type": "speech_mossformer_separation_temporal_8k", "model_config": SMALL, "lr": 1e-3}
    with open(tmp_path / "configuration.json", "w") as file:
        json.dump({"framework": "pytorch", "model": model_section}, file)
    model = mossformer_from_official(tmp_path)
    assert model.config == {**SMALL, "expansion_factor": 4.0}
    assert mossformer_from_official(tmp_path, attn_dropout=0.0).config["attn_dropout"] == 0.0


def _official_parts(model):
    return {part: dict(getattr(model, attribute).state_dict()) for part, attribute in PARTS.items()}


def test_rejects_missing_tensor(small_pair):
    parts = _official_parts(small_pair[0])
    del parts["masknet"]["mdl.att_mdl.mossformerM.layers.1.to_qk.mdl.1.bias"]
    with pytest.raises(CheckpointMismatchError, match=r"missing 1 .*layers\.1\.to_qk\.mdl\.1\.bias"):
        mossformer_from_official(parts, **SMALL)


def test_rejects_missing_rotary_frequencies(small_pair):
    parts = _official_parts(small_pair[0])
    del parts["masknet"]["mdl.att_mdl.mossformerM.layers.0.rotary_pos_emb.freqs"]
    with pytest.raises(CheckpointMismatchError, match=r"missing .*layers\.0\.rotary_pos_emb\.freqs"):
        mossformer_from_official(parts, **SMALL)


def test_rejects_extra_tensor(small_pair):
    parts = _official_parts(small_pair[0])
    parts["encoder"]["conv1d.bias"] = torch.zeros(SMALL["out_channels"])
    with pytest.raises(CheckpointMismatchError, match=r"unexpected 1 .*encoder/conv1d\.bias"):
        mossformer_from_official(parts, **SMALL)


def test_rejects_wrong_configuration(small_pair):
    """More blocks in the checkpoint than in the model: every surplus tensor is unexpected."""
    parts = _official_parts(small_pair[0])
    with pytest.raises(CheckpointMismatchError, match=r"unexpected 15 .*layers\.1\."):
        mossformer_from_official(parts, **dict(SMALL, num_blocks=1))
    with pytest.raises(CheckpointMismatchError, match=r"wrong shape: .*qk_offset_scale"):
        mossformer_from_official(parts, **dict(SMALL, query_key_dim=16))


def test_rejects_inconsistent_rotary_frequencies(small_pair):
    parts = _official_parts(small_pair[0])
    name = "mdl.att_mdl.mossformerM.layers.1.rotary_pos_emb.freqs"
    parts["masknet"][name] = parts["masknet"][name] * 2
    with pytest.raises(CheckpointMismatchError, match="rotary"):
        mossformer_from_official(parts, **SMALL)


def test_speechbrain_recipe_contract(small_pair):
    """Separation exactly as the forward pass of SpeechBrain's WSJ0Mix SepFormer recipe."""
    theirs, model, _ = small_pair
    encoder, masknet, decoder = model.encoder, model.masknet, model.decoder
    num_spks = SMALL["num_spks"]
    mix = mixtures(2, ODD_LENGTHS[0])
    with torch.inference_mode():
        mix_w = encoder(mix)
        est_mask = masknet(mix_w)
        mix_w = torch.stack([mix_w] * num_spks)
        sep_h = mix_w * est_mask
        est_source = torch.cat(
            [decoder(sep_h[i]).unsqueeze(-1) for i in range(num_spks)],
            dim=-1,
        )
        # The recipe then zero-pads (or crops) the estimate to the mixture's length.
        est_source = F.pad(est_source, (0, 0, 0, mix.shape[1] - est_source.shape[1]))
        frames = (mix.shape[1] - 16) // 8 + 1
        assert encoder(mix).shape == (2, SMALL["in_channels"], frames)
        assert est_mask.shape == (num_spks, 2, SMALL["in_channels"], frames)
        assert decoder(sep_h[0]).shape == (2, (frames - 1) * 8 + 16)
        assert_parity(est_source, theirs(mix))


def test_hparams_yaml_instantiates(small_pair):
    overrides = {"sample_rate": 16000, "num_blocks": 2, "d_model": 64, "N_encoder_out": 64,
                 "group_size": 16, "query_key_dim": 32}
    with open(HPARAMS) as file:
        hparams = load_hyperpyyaml(file, overrides=overrides)
    assert hparams["sample_rate"] == 16000 and hparams["num_spks"] == 2
    assert set(hparams["modules"]) == {"encoder", "masknet", "decoder"}
    separator = hparams["separator"]
    assert separator.masknet is hparams["masknet"] and separator.encoder is hparams["encoder"]
    assert separator.config == SMALL
    # Converted official weights go into the yaml's modules under the same names.
    theirs, converted, _ = small_pair
    for name, module in hparams["modules"].items():
        module.load_state_dict(getattr(converted, name).state_dict(), strict=True)
    mix = mixtures(1, ODD_LENGTHS[0])
    with torch.inference_mode():
        assert_parity(separator.eval()(mix), theirs(mix))
    # The default configuration is the official model.
    with open(HPARAMS) as file:
        official = load_hyperpyyaml(file)
    assert official["sample_rate"] == 8000
    assert official["separator"].config == OFFICIAL
    assert sum(p.numel() for p in official["separator"].parameters()) == 42_101_850


def test_training_step_lowers_pit_loss():
    from speechbrain.nnet.losses import get_si_snr_with_pitwrapper

    torch.manual_seed(0)
    model = MossFormer(**dict(SMALL, num_blocks=1, attn_dropout=0.0)).train()
    sources = 0.3 * torch.randn(2, 1201, 2)
    mix = sources.sum(-1)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    loss = get_si_snr_with_pitwrapper(sources, model(mix)).mean()
    optimizer.zero_grad()
    loss.backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for _, p in trainable)
    assert all(p.grad.abs().sum() > 0 for n, p in trainable), "a parameter gets no gradient"
    optimizer.step()

    assert get_si_snr_with_pitwrapper(sources, model(mix)).mean() < loss


def test_doctests():
    run_doctests((mossformer_module, None), (convert, "mossformer"))


def test_training_gradients_match_reference_for_every_parameter(tmp_path):
    """A training step's loss (SpeechBrain's PIT SI-SNR, as both trainers use) gives the
    reference's gradient for every parameter (float64, so that rounding does not blur it;
    no dropout, so that both draw nothing)."""
    from speechbrain.nnet.losses import get_si_snr_with_pitwrapper

    from speechbrain_ext.convert import _MOSSFORMER_TO_OFFICIAL, _mossformer_rename

    config = dict(SMALL, attn_dropout=0.0)
    theirs = build_reference(config, tmp_path, seed=7).train().double()
    ours = mossformer_from_official(save_official(theirs, tmp_path), **config).train().double()
    sources = mixtures(2, ODD_LENGTHS[0]).double().unsqueeze(-1).repeat(1, 1, 2)
    sources[..., 1] = sources[..., 1].roll(97, dims=1) * 0.7
    mix = sources.sum(-1)
    for model in (ours, theirs):
        get_si_snr_with_pitwrapper(sources, model(mix)).mean().backward()
    worst, checked = 0.0, 0
    for part, official_part in PARTS.items():
        official = dict(getattr(theirs, official_part).named_parameters())
        for name, parameter in getattr(ours, part).named_parameters():
            if not parameter.requires_grad:  # the fixed rotary frequencies
                continue
            official_name = name if part != "masknet" else _mossformer_rename(name, _MOSSFORMER_TO_OFFICIAL)
            expected = official[official_name].grad.view_as(parameter)
            worst = max(worst, ((parameter.grad - expected).abs().max() / expected.abs().max()).item())
            checked += 1
    assert checked == sum(1 for p in ours.parameters() if p.requires_grad)
    assert worst <= 1e-4, f"largest gradient difference {worst:.2e} of the gradient's scale"


@pytest.mark.parametrize("length, batch", [(20, 2), (16, 1), (5, 3)])  # whole groups + a tail; whole; tail only
def test_training_attention_route_equals_autograd_route_with_dropout(monkeypatch, length, batch):
    """The block's hand-written training backward (:class:`_GatedJointAttention`) gives autograd's
    output and gradients, dropout masks included (same seed: the same masks)."""
    block = mossformer_module.MossFormerBlock(d_model=16, group_size=8, query_key_dim=8, dropout=0.3).double().train()
    rotation = mossformer_module.RotaryEmbedding(dim=8).double()(length)
    x = torch.randn(batch, length, 16, dtype=torch.double, generator=torch.Generator().manual_seed(3))
    upstream = torch.randn(batch, length, 16, dtype=torch.double, generator=torch.Generator().manual_seed(4))
    calls = []
    fused_apply = mossformer_module._GatedJointAttention.apply
    monkeypatch.setattr(mossformer_module._GatedJointAttention, "apply", lambda *a: calls.append(1) or fused_apply(*a))
    results = []
    for fused in (True, False):
        if not fused:
            monkeypatch.setattr(mossformer_module, "_use_gated_joint_attention", lambda hidden, causal: False)
        block.zero_grad()
        inputs = x.clone().requires_grad_()
        torch.manual_seed(11)
        out = block(inputs, rotation)
        out.backward(upstream)
        results.append([out.detach(), inputs.grad] + [p.grad.clone() for p in block.parameters() if p.requires_grad])
    assert calls == [1]  # the first pass took the hand-written route, the second autograd's
    for ours, autograd in zip(*results):
        torch.testing.assert_close(ours, autograd, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("chunk_frames", [1, 7, None])  # time chunks of the weight gradient; None: one
@pytest.mark.parametrize("length", [1, 3, 8, 40])  # shorter than the kernel's half, than the kernel, longer
def test_depthwise_time_convolution_gradients_equal_conv1d(monkeypatch, length, chunk_frames):
    """The time-major depthwise convolution's hand-written backward equals autograd's F.conv1d."""
    if chunk_frames is not None:
        monkeypatch.setattr(mossformer_module, "WEIGHT_GRADIENT_CHUNK", 2 * 6 * chunk_frames)
    conv = mossformer_module.DepthwiseTimeConv(6, kernel_size=17).double()
    x = torch.randn(2, length, 6, dtype=torch.double, requires_grad=True)
    upstream = torch.randn(2, length, 6, dtype=torch.double)
    conv(x).backward(upstream)
    weight = conv.weight.detach().clone().requires_grad_()
    plain_x = x.detach().clone().requires_grad_()
    F.conv1d(plain_x.transpose(1, 2), weight, padding=8, groups=6).transpose(1, 2).backward(upstream)
    torch.testing.assert_close(x.grad, plain_x.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(conv.weight.grad, weight.grad, rtol=1e-12, atol=1e-12)


def test_bfloat16_autocast_training_step_on_cpu_finishes():
    """Under CPU bfloat16 autocast (the recipes' ``precision: bf16``), a training step returns
    with finite gradients: oneDNN's bfloat16 depthwise kernel for channels-last maps did not
    return on this project's AMD machine, so the depthwise convolution avoids it. Run in a
    subprocess so that a hang fails the test instead of stalling the suite."""
    import subprocess
    import sys

    script = (
        "import torch\n"
        "from speechbrain_ext.lobes.models.mossformer import MossFormer\n"
        "torch.manual_seed(0)\n"
        "model = MossFormer(in_channels=32, out_channels=32, d_model=32, num_blocks=1, group_size=8,"
        " query_key_dim=16).train()\n"
        "with torch.autocast('cpu', dtype=torch.bfloat16):\n"
        "    out = model(torch.randn(2, 800))\n"
        "out.float().pow(2).mean().backward()\n"
        "grads = [p.grad for p in model.parameters() if p.requires_grad]\n"
        "assert out.dtype == torch.bfloat16 and out.shape == (2, 800, 2), (out.dtype, out.shape)\n"
        "assert all(g is not None and bool(torch.isfinite(g).all()) for g in grads)\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]

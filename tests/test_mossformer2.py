"""MossFormer2 separation: parity with the reference (ClearerVoice-Studio's own code, PyPI
``clearvoice``), gradients, and the strict checkpoint converters in both directions.

The reference is an oracle only: it is built with seeded random weights (every tensor
perturbed) and our model is filled from its state dict through the converter.
"""

import os

import pytest
import torch
import torch.nn.functional as F
from hyperpyyaml import load_hyperpyyaml

from speechbrain_ext import convert
from speechbrain_ext.convert import (
    CheckpointMismatchError,
    load_mossformer2_official,
    mossformer2_from_official,
    mossformer2_to_official,
)
from speechbrain_ext.evaluation import metrics
from speechbrain_ext.lobes.models import mossformer2 as mossformer2_module
from speechbrain_ext.lobes.models.mossformer2 import MossFormer2, MossFormer2MaskNet

from conftest import gradients_as_model, make_reference_mossformer2, mossformer2_kwargs, run_doctests

pytestmark = pytest.mark.usefixtures("two_threads")  # as on the 2-core CI machine

HPARAMS = os.path.join(os.path.dirname(__file__), "..", "hparams", "mossformer2.yaml")
SMALL = mossformer2_kwargs(dim=64, num_blocks=2)
# Not a multiple of the hop (8); in frames (249, 2000) neither a whole attention group (256)
# nor, for the first, more than one.
ODD_LENGTHS = (2001, 16007)




def mixtures(batch, length, seed=0):
    return 0.3 * torch.randn(batch, length, generator=torch.Generator().manual_seed(seed))


def reference_output(theirs, mix):
    return torch.stack(theirs(mix), dim=-1)  # its list of [B, T] -> [B, T, spks]


def assert_parity(ours, theirs):
    """max |difference| <= 1e-4 of the output's peak and SI-SNR >= 100 dB for every source."""
    assert ours.shape == theirs.shape
    relative = ((ours - theirs).abs().max() / theirs.abs().max()).item()
    si_snr = metrics.si_snr(ours.double().transpose(1, 2), theirs.double().transpose(1, 2), eps=1e-20)
    assert relative <= 1e-4, f"max |difference| {relative:.2e} of the peak"
    assert si_snr.min().item() >= 100, f"SI-SNR {si_snr.min().item():.1f} dB"
    return relative, si_snr.min().item()


@pytest.fixture(scope="module")
def small_pair():
    theirs = make_reference_mossformer2(**{"dim": 64, "num_blocks": 2})
    return theirs, mossformer2_from_official({"model": theirs.state_dict()}, **SMALL)


@pytest.mark.parametrize("length", ODD_LENGTHS)
def test_parity_small(small_pair, length):
    theirs, ours = small_pair
    mix = mixtures(2, length)
    with torch.no_grad():
        assert_parity(ours(mix), reference_output(theirs, mix))


def test_parity_three_speakers():
    theirs = make_reference_mossformer2(dim=32, num_blocks=1, num_spks=3, seed=4)
    ours = mossformer2_from_official(theirs.state_dict(), **mossformer2_kwargs(32, 1, num_spks=3))
    mix = mixtures(3, 1203, seed=2)
    with torch.no_grad():
        assert_parity(ours(mix), reference_output(theirs, mix))


def test_parity_official_size():
    """The official MossFormer2_SS_16K (55,735,410 parameters), batch 2, 0.3 s at 16 kHz."""
    theirs = make_reference_mossformer2(dim=512, num_blocks=24, seed=3)
    ours = mossformer2_from_official({"model": {f"module.{k}": v for k, v in theirs.state_dict().items()}})
    assert sum(p.numel() for p in ours.parameters()) == 55_735_410
    mix = mixtures(2, 4807, seed=5)
    with torch.no_grad():
        expected = reference_output(theirs, mix)
        assert_parity(ours(mix), expected)
        assert_parity(ours.fuse_for_inference()(mix), expected)  # the interfaces' path


def test_fused_for_inference_matches_the_plain_model(small_pair):
    _, ours = small_pair
    mix = mixtures(1, ODD_LENGTHS[0], seed=1)
    fused = mossformer2_from_official(mossformer2_to_official(ours), **SMALL).fuse_for_inference()
    recurrences = fused.masknet.recurrences
    assert all(r.prepacked and r.to_memory.prepacked and r.to_gate.prepacked for r in recurrences)
    with torch.no_grad():
        assert torch.allclose(fused(mix), ours(mix), atol=1e-6)
    fused.train()  # training reads the parameters themselves again
    assert not any(r.prepacked or r.to_memory.prepacked or r.to_gate.prepacked for r in recurrences)


def test_training_gradients_match_reference_for_every_parameter():
    """SpeechBrain's PIT SI-SNR loss gives the reference's gradient for every parameter
    (float64; dropout off in both, so that neither draws)."""
    from speechbrain.nnet.losses import get_si_snr_with_pitwrapper

    theirs = make_reference_mossformer2(dim=32, num_blocks=2, seed=7).double()
    for module in theirs.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    ours = mossformer2_from_official(theirs.state_dict(), **mossformer2_kwargs(32, 2), attn_dropout=0.0).double()
    theirs.train(), ours.train()
    sources = mixtures(2, 1203).double().unsqueeze(-1).repeat(1, 1, 2)
    sources[..., 1] = sources[..., 1].roll(97, dims=1) * 0.7
    mix = sources.sum(-1)
    get_si_snr_with_pitwrapper(sources, ours(mix)).mean().backward()
    get_si_snr_with_pitwrapper(sources, reference_output(theirs, mix)).mean().backward()

    # Our parameters in the official layout, with their gradients alongside.
    official = mossformer2_to_official(ours)
    our_grads = mossformer2_to_official(gradients_as_model(ours))  # our gradients, official names
    worst, checked = 0.0, 0
    for name, parameter in theirs.named_parameters():
        if not parameter.requires_grad:
            continue
        assert torch.equal(official[name], parameter.detach())
        expected = parameter.grad
        worst = max(worst, ((our_grads[name] - expected).abs().max() / expected.abs().max()).item())
        checked += 1
    assert checked == sum(1 for p in theirs.parameters() if p.requires_grad)
    assert worst <= 1e-4, f"largest gradient difference {worst:.2e} of the gradient's scale"


def test_round_trip_loads_strictly_into_reference(small_pair, tmp_path):
    theirs, ours = small_pair
    fresh = make_reference_mossformer2(dim=64, num_blocks=2, seed=9)
    fresh.load_state_dict(mossformer2_to_official(ours), strict=True)
    mix = mixtures(1, ODD_LENGTHS[0])
    with torch.no_grad():
        assert torch.equal(reference_output(fresh, mix), reference_output(theirs, mix))

    # A ClearerVoice-Studio folder: the pointer file, {'model': ...}, and our configuration.
    folder = tmp_path / "exported"
    mossformer2_to_official(ours, folder, sample_rate=16000)
    assert (folder / "last_best_checkpoint").read_text().strip() == "model.pt"
    again = mossformer2_from_official(folder)  # sizes from configuration.json
    assert again.config == ours.config
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), ours.state_dict().values()))


def test_load_into_existing_modules(small_pair):
    theirs, ours = small_pair
    modules = MossFormer2(**SMALL)
    load_mossformer2_official(modules, theirs.state_dict())
    mix = mixtures(1, ODD_LENGTHS[0])
    with torch.no_grad():
        assert torch.equal(modules.eval()(mix), ours(mix))


def test_rejects_mismatched_checkpoints(small_pair, tmp_path):
    theirs, _ = small_pair
    state = theirs.state_dict()
    memory = "mask_net.mdl.intra_mdl.mossformerM.fsmn.1.gated_fsmn.fsmn.conv.conv2.weight"
    without = {k: v for k, v in state.items() if k != memory}
    with pytest.raises(CheckpointMismatchError, match=r"missing 1 tensor\(s\): mask_net.mdl.intra_mdl.mossformerM.fsmn.1.gated"):
        mossformer2_from_official(without, **SMALL)
    with pytest.raises(CheckpointMismatchError, match="unexpected 1 tensor"):
        mossformer2_from_official({**state, "mask_net.extra.weight": torch.zeros(1)}, **SMALL)
    with pytest.raises(CheckpointMismatchError, match="wrong shape"):
        mossformer2_from_official(state, **dict(SMALL, memory_order=10))
    with pytest.raises(CheckpointMismatchError, match="missing"):  # a layer too many
        mossformer2_from_official(state, **dict(SMALL, memory_depth=3))
    with pytest.raises(CheckpointMismatchError, match="unexpected"):  # block 1's tensors, for a 1-block model
        mossformer2_from_official(state, **dict(SMALL, num_blocks=1))
    rotary = dict(state)
    name = "mask_net.mdl.intra_mdl.mossformerM.layers.1.rotary_pos_emb.freqs"
    rotary[name] = rotary[name] * 2
    with pytest.raises(CheckpointMismatchError, match="rotary"):
        mossformer2_from_official(rotary, **SMALL)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointMismatchError, match="last_best_checkpoint"):
        mossformer2_from_official(tmp_path / "empty")
    (tmp_path / "empty" / "last_best_checkpoint").write_text("gone.pt\n")
    with pytest.raises(CheckpointMismatchError, match="names 'gone.pt'"):
        mossformer2_from_official(tmp_path / "empty")


def test_causal_is_refused():
    with pytest.raises(ValueError, match="cannot be causal"):
        MossFormer2MaskNet(32, 32, num_blocks=1, causal=True)


def test_speechbrain_recipe_contract(small_pair):
    """Separation exactly as the forward pass of SpeechBrain's WSJ0Mix SepFormer recipe."""
    theirs, model = small_pair
    mix = mixtures(2, ODD_LENGTHS[0])
    with torch.inference_mode():
        mix_w = model.encoder(mix)
        est_mask = model.masknet(mix_w)
        sep_h = torch.stack([mix_w] * 2) * est_mask
        est_source = torch.cat([model.decoder(sep_h[i]).unsqueeze(-1) for i in range(2)], dim=-1)
        est_source = F.pad(est_source, (0, 0, 0, mix.shape[1] - est_source.shape[1]))
        assert est_mask.shape == (2, 2, 64, (mix.shape[1] - 16) // 8 + 1)
        assert_parity(est_source, reference_output(theirs, mix))


def test_sepformer_separation_runs_it_unchanged(small_pair):
    """SpeechBrain's own SepformerSeparation interface, given our three modules."""
    from speechbrain.inference.separation import SepformerSeparation

    theirs, model = small_pair
    separator = SepformerSeparation(
        modules={"encoder": model.encoder, "masknet": model.masknet, "decoder": model.decoder},
        hparams={"sample_rate": 16000, "num_spks": 2},
    )
    mix = mixtures(1, ODD_LENGTHS[0])
    assert_parity(separator.separate_batch(mix), reference_output(theirs, mix))


def test_hparams_yaml_instantiates(small_pair):
    overrides = {"num_blocks": 2, "d_model": 64, "N_encoder_out": 64}
    with open(HPARAMS) as file:
        hparams = load_hyperpyyaml(file, overrides=overrides)
    separator = hparams["separator"]
    assert isinstance(separator, MossFormer2) and separator.masknet is hparams["masknet"]
    assert separator.config == MossFormer2(**SMALL).config
    theirs, _ = small_pair
    load_mossformer2_official(hparams["modules"], theirs.state_dict())
    mix = mixtures(1, ODD_LENGTHS[0])
    with torch.inference_mode():
        assert_parity(separator.eval()(mix), reference_output(theirs, mix))
    with open(HPARAMS) as file:
        official = load_hyperpyyaml(file)
    assert official["sample_rate"] == 16000
    assert official["separator"].config == MossFormer2().config


def test_training_step_lowers_pit_loss():
    from speechbrain.nnet.losses import get_si_snr_with_pitwrapper

    torch.manual_seed(0)
    model = MossFormer2(**mossformer2_kwargs(32, 1), group_size=16, query_key_dim=16, fsmn_channels=16,
                        attn_dropout=0.0).train()
    sources = 0.3 * torch.randn(2, 1201, 2)
    mix = sources.sum(-1)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss = get_si_snr_with_pitwrapper(sources, model(mix)).mean()
    for _ in range(5):
        optimizer.zero_grad()
        step_loss = get_si_snr_with_pitwrapper(sources, model(mix)).mean()
        step_loss.backward()
        optimizer.step()
    assert get_si_snr_with_pitwrapper(sources, model(mix)).mean() < loss - 0.5


def test_doctests():
    run_doctests((mossformer2_module, None), (convert, "mossformer2"))

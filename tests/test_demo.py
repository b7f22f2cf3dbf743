"""The offline demo: bundled demo weights and examples, and the quality of the demo weights."""

import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from speechbrain_ext.demo import DEMO_CARDS, EXAMPLES_DIR
from speechbrain_ext.evaluation import si_snr, stoi
from speechbrain_ext.inference import EnhanceFRCRN
from speechbrain_ext.inference.sources import CARDS_DIR

CLI = os.path.join(os.path.dirname(sys.executable), "speechbrain-ext")
HELD_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


def test_demo_weights_are_small():
    total = sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(CARDS_DIR)
                for f in files if root.rsplit(os.sep, 1)[-1] in DEMO_CARDS.values())
    assert 0 < total <= 20 * 2**20


def _clips(folder, *roles):
    """The shipped held-out clips (voices and noise types the demo models never heard; made by
    ``benchmarks/demo_weights.py ship``): ``{name: [signal per role]}``."""
    names = sorted(os.listdir(os.path.join(HELD_OUT, folder, roles[0])))
    assert names, folder
    return {n: [sf.read(os.path.join(HELD_OUT, folder, role, n))[0] for role in roles] for n in names}


def test_demo_frcrn_on_held_out_voices_and_noises():
    # One clip per held-out voice, the held-out noise types taking turns. What the card reports,
    # less a margin: fan noise is removed (+4.3..+7.3 dB, STOI -0.009..+0.03), unseen recorded
    # sounds partly (+2.8..+16.3 dB), unseen babble a little (+1.9..+3.6 dB, STOI +0.015..+0.03);
    # on average +5.5 dB, STOI higher.
    enhancer = EnhanceFRCRN.from_hparams(source=os.path.join(CARDS_DIR, DEMO_CARDS["enhancement"]))
    improvements, stoi_noisy, stoi_enhanced = [], [], []
    for name, (clean, noisy) in _clips("heldout_enhancement", "clean", "noisy").items():
        enhanced = enhancer.enhance_batch(torch.from_numpy(noisy).float()).numpy().astype(np.float64)
        improvements.append(si_snr(enhanced, clean) - si_snr(noisy, clean))
        stoi_noisy.append(stoi(clean, noisy, 16000))
        stoi_enhanced.append(stoi(clean, enhanced, 16000))
        if "_fan" in name:
            assert improvements[-1] >= 4.0 and stoi_enhanced[-1] >= stoi_noisy[-1] - 0.01, name
    assert len(improvements) == 9
    assert np.mean(improvements) >= 4.5, improvements
    assert np.mean(stoi_enhanced) >= np.mean(stoi_noisy) + 0.005, (stoi_noisy, stoi_enhanced)


def test_demo_command_runs_offline_and_writes_results(tmp_path):
    result = subprocess.run([CLI, "demo", "-o", str(tmp_path)], capture_output=True, text=True,
                            env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("improvement +") == 2, result.stdout
    assert "PESQ-WB" in result.stdout and "STOI" in result.stdout and "DNSMOS SIG" in result.stdout
    enhanced, rate = sf.read(tmp_path / "enhanced.wav")
    assert rate == 16000 and len(enhanced) == sf.info(os.path.join(EXAMPLES_DIR, "noisy.wav")).frames
    with open(tmp_path / "spectrograms.png", "rb") as stream:
        assert stream.read(8) == b"\x89PNG\r\n\x1a\n"


def test_demo_mossformer_separates_held_out_voices():
    from speechbrain_ext.inference import SeparateMossFormer

    separator = SeparateMossFormer.from_hparams(source=os.path.join(CARDS_DIR, DEMO_CARDS["separation"]))
    improvements = []
    for name, (mixture, *sources) in _clips("heldout_separation", "mix", "s1", "s2").items():
        estimates = separator.separate_batch(torch.from_numpy(mixture).float()).numpy().T.astype(np.float64)
        improvements.append(max(
            np.mean([si_snr(estimates[e], sources[s]) - si_snr(mixture, sources[s]) for s, e in enumerate(order)])
            for order in ((0, 1), (1, 0))
        ))
    # Four mixtures of held-out voices, +6.1..+13.9 dB (mean 9.6): the card's +8.1 dB on 45.
    assert len(improvements) == 4 and np.mean(improvements) >= 8.5, improvements


def _demo_weights_script():
    import importlib.util

    path = os.path.join(os.path.dirname(HELD_OUT), "..", "benchmarks", "demo_weights.py")
    spec = importlib.util.spec_from_file_location("demo_weights_script", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_extra_training_voices_keep_the_held_out_voices_out():
    # ``more-voices``: new speaker ids (dynamic mixing tells speakers by their first 3
    # characters), all training; warps only of training voices; random espeak-ng variants
    # never use the held-out klatt3's synthesis mode, and differ from one another.
    script = _demo_weights_script()
    base = script.voices()
    table, variants = script.extra_voices("/nowhere")
    ids = [v["id"] for v in table]
    assert len(ids) == len(set(ids)) == 80 and all(len(i) == 3 for i in ids)
    assert not set(ids) & {v["id"] for v in base}
    assert not any(v["heldout"] for v in table)
    held_out = {(v["engine"], v["voice"]) for v in base if v["heldout"]}
    assert not {(v["engine"], v["voice"]) for v in table} & held_out
    assert {v["warp"] for v in table if "warp" in v} == set(script.FORMANT_WARPS)
    assert len(set(variants.values())) == len(variants) == 60
    assert not any("klatt 3" in text for text in variants.values())
    assert all(f"+{name}" in v["voice"] for name, v in zip(variants, table))


def test_grown_mossformer_computes_what_the_trained_one_did():
    # ``continue-mossformer --num-blocks``: new blocks (copies with a zero output projection)
    # after the trained ones; the deeper model starts from the same outputs, and trains.
    from speechbrain_ext.lobes.models.mossformer import MossFormer

    script = _demo_weights_script()
    torch.manual_seed(0)
    model = MossFormer(in_channels=16, out_channels=16, d_model=16, num_blocks=2, group_size=8, query_key_dim=8).eval()
    for parameter in model.parameters():  # trained-looking weights: nothing zero
        parameter.data.add_(0.05 * torch.randn_like(parameter))
    mix = torch.randn(2, 800)
    with torch.no_grad():
        before = model(mix)
    trained = list(model.masknet.blocks)
    script.grown_mossformer(model, 5)
    blocks = list(model.masknet.blocks)
    assert len(blocks) == 5 and blocks[0] is trained[0] and blocks[3] is trained[1]
    with torch.no_grad():
        assert torch.equal(model(mix), before)
    added = blocks[1]
    assert not added.to_out.linear.weight.any()
    model.train()
    model(mix).pow(2).mean().backward()
    assert added.to_out.linear.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="cannot grow 5 blocks to 3"):
        script.grown_mossformer(model, 3)


def test_last_model_averages_the_last_epochs(tmp_path):
    # ``last-model --keep-last-epochs N``: the exported folder with the mean of the last N
    # end-of-epoch checkpoints' weights (intra-epoch ones and older epochs left out).
    from speechbrain.utils.checkpoints import Checkpointer

    script = _demo_weights_script()
    run = tmp_path / "run"
    layer = torch.nn.Linear(3, 2)
    checkpointer = Checkpointer(str(run / "save"), {"model": layer})
    for epoch, value in enumerate([10.0, 1.0, 2.0, 6.0], start=1):
        torch.nn.init.constant_(layer.weight, value)
        checkpointer.save_checkpoint(meta={"epoch": epoch})
    torch.nn.init.constant_(layer.weight, 100.0)
    checkpointer.save_checkpoint(meta={"brain_intra_epoch_ckpt": True}, end_of_epoch=False)
    (run / "model").mkdir()
    (run / "model" / "hyperparams.yaml").write_text("# the model's card\n")
    torch.save(layer.state_dict(), run / "model" / "model.ckpt")

    averaged = script.last_model(str(run), epochs=3)
    assert averaged == str(run / "model_avg3")
    assert (run / "model_avg3" / "hyperparams.yaml").read_text() == "# the model's card\n"
    weight = torch.load(run / "model_avg3" / "model.ckpt", weights_only=True)["weight"]
    assert torch.allclose(weight, torch.full((2, 3), 3.0))  # (1 + 2 + 6) / 3
    last = torch.load(os.path.join(script.last_model(str(run)), "model.ckpt"), weights_only=True)["weight"]
    assert torch.equal(last, torch.full((2, 3), 6.0))
    with pytest.raises(SystemExit, match="4 end-of-epoch checkpoints kept, 5 asked"):
        script.last_model(str(run), epochs=5)

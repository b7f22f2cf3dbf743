"""Every kind of model source, offline: local folders (SpeechBrain format and official layouts),
Hugging Face repos through huggingface_hub's own cache with HF_HUB_OFFLINE=1, ModelScope ids
through the modelscope client's cache, and the `convert` command."""

import json
import os
import subprocess
import sys

import pytest
import torch

from speechbrain_ext.convert import frcrn_from_official, mossformer2_from_official, mossformer2_to_official
from speechbrain_ext.inference import EnhanceFRCRN, SeparateMossFormer
from speechbrain_ext.inference.sources import SourceError
from speechbrain_ext.model_folders import write_model_folder

from conftest import make_reference_frcrn, make_reference_mossformer, make_reference_mossformer2, mossformer2_kwargs

COMMIT_A, COMMIT_B = "a" * 40, "b" * 40
NOISY = 0.1 * torch.randn(1, 8000, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def frcrn_weights():
    """Two different official FRCRN state dicts (seeded random)."""
    return make_reference_frcrn(seed=0).state_dict(), make_reference_frcrn(seed=1).state_dict()


def expected_output(state):
    enhancer = EnhanceFRCRN(modules={"model": frcrn_from_official(state)}, hparams={"sample_rate": 16000})
    return enhancer.enhance_batch(NOISY)


def fill_hf_cache(home, repo_id, files_by_commit, main):
    """Lay out huggingface_hub's cache as a download would: snapshots per commit, refs/main."""
    repo_dir = os.path.join(home, "hub", "models--" + repo_id.replace("/", "--"))
    for commit, files in files_by_commit.items():
        snapshot = os.path.join(repo_dir, "snapshots", commit)
        os.makedirs(snapshot, exist_ok=True)
        for name, write in files.items():
            write(os.path.join(snapshot, name))
    os.makedirs(os.path.join(repo_dir, "refs"), exist_ok=True)
    with open(os.path.join(repo_dir, "refs", "main"), "w") as stream:
        stream.write(main)


def clearervoice_files(state):
    def pointer(path):
        with open(path, "w") as stream:
            stream.write("model.ckpt-88-8491630.pt\n")

    def checkpoint(path):
        torch.save({"model": {f"module.{k}": v for k, v in state.items()}, "epoch": 88, "step": 8491630}, path)

    return {"last_best_checkpoint": pointer, "model.ckpt-88-8491630.pt": checkpoint}


def run_offline(code, env_extra, tmp_path):
    """Run ``code`` in a fresh interpreter with the hub caches set and no network allowed."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", **env_extra)
    script = "import sys, torch\nsys.path.insert(0, 'tests')\n" + code
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, cwd=os.getcwd())
    assert result.returncode == 0, result.stderr[-3000:]
    return torch.load(tmp_path / "out.pt", weights_only=True)


ENHANCE = """
from speechbrain_ext.inference import EnhanceFRCRN
noisy = 0.1 * torch.randn(1, 8000, generator=torch.Generator().manual_seed(0))
model = EnhanceFRCRN.from_hparams(source={source!r}, revision={revision!r}, savedir={savedir!r})
torch.save(model.enhance_batch(noisy), {out!r})
"""


def test_official_huggingface_repo_from_offline_cache_with_pinned_revision(frcrn_weights, tmp_path):
    home = str(tmp_path / "hf")
    files = {COMMIT_A: clearervoice_files(frcrn_weights[0]), COMMIT_B: clearervoice_files(frcrn_weights[1])}
    fill_hf_cache(home, "alibabasglab/FRCRN_SE_16K", files, main=COMMIT_B)
    for revision, state in ((None, frcrn_weights[1]), (COMMIT_A, frcrn_weights[0])):
        code = ENHANCE.format(source="alibabasglab/FRCRN_SE_16K", revision=revision, savedir=None,
                              out=str(tmp_path / "out.pt"))
        out = run_offline(code, {"HF_HOME": home}, tmp_path)
        assert (out - expected_output(state)).abs().max() < 1e-5, revision


def test_speechbrain_format_huggingface_repo_from_offline_cache(frcrn_weights, tmp_path):
    folder = tmp_path / "sb"
    enhancer = EnhanceFRCRN(modules={"model": frcrn_from_official(frcrn_weights[0])},
                            hparams={"sample_rate": 16000})
    write_model_folder(enhancer, folder)
    home = str(tmp_path / "hf")

    def copier(name):
        return lambda path: os.link(folder / name, path)

    fill_hf_cache(home, "someone/frcrn-speechbrain", {COMMIT_A: {n: copier(n) for n in os.listdir(folder)}},
                  main=COMMIT_A)
    code = ENHANCE.format(source="someone/frcrn-speechbrain", revision=None, savedir=str(tmp_path / "saved"),
                          out=str(tmp_path / "out.pt"))
    out = run_offline(code, {"HF_HOME": home}, tmp_path)
    assert (out - expected_output(frcrn_weights[0])).abs().max() < 1e-5


def test_local_official_folders(frcrn_weights, tmp_path):
    modelscope = tmp_path / "modelscope"
    modelscope.mkdir()
    torch.save(frcrn_weights[0], modelscope / "pytorch_model.bin")
    clearervoice = tmp_path / "clearervoice"
    clearervoice.mkdir()
    for name, write in clearervoice_files(frcrn_weights[1]).items():
        write(clearervoice / name)
    for folder, state in ((modelscope, frcrn_weights[0]), (clearervoice, frcrn_weights[1])):
        out = EnhanceFRCRN.from_hparams(source=str(folder)).enhance_batch(NOISY)
        assert (out - expected_output(state)).abs().max() < 1e-5


def test_convert_command_writes_a_loadable_speechbrain_folder(frcrn_weights, tmp_path):
    official = tmp_path / "official"
    official.mkdir()
    torch.save(frcrn_weights[0], official / "pytorch_model.bin")
    out_dir = tmp_path / "converted"
    cli = os.path.join(os.path.dirname(sys.executable), "speechbrain-ext")
    result = subprocess.run([cli, "convert", "enhancement", "--model", str(official), "-o", str(out_dir)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(out_dir)) == ["README.md", "hyperparams.yaml", "model.ckpt"]
    loaded = EnhanceFRCRN.from_hparams(source=str(out_dir), savedir=str(tmp_path / "saved"))
    assert (loaded.enhance_batch(NOISY) - expected_output(frcrn_weights[0])).abs().max() < 1e-5


def test_modelscope_id_from_offline_cache(tmp_path):
    cache = tmp_path / "modelscope_cache"
    snapshot = cache / "models" / "iic--speech_mossformer_separation_temporal_8k" / "snapshots" / "master"
    reference = make_reference_mossformer(snapshot, seed=3)
    with open(snapshot / "configuration.json", "w") as stream:
        json.dump({"framework": "pytorch", "task": "speech-separation", "model": {"type": "speech_mossformer"}}, stream)
    mix = 0.1 * torch.randn(1, 4001, generator=torch.Generator().manual_seed(0))
    code = f"""
from speechbrain_ext.inference import SeparateMossFormer
mix = 0.1 * torch.randn(1, 4001, generator=torch.Generator().manual_seed(0))
model = SeparateMossFormer.from_hparams(source="iic/speech_mossformer_separation_temporal_8k")
torch.save(model.separate_batch(mix), {str(tmp_path / "out.pt")!r})
"""
    out = run_offline(code, {"MODELSCOPE_CACHE": str(cache)}, tmp_path)
    with torch.no_grad():
        expected = reference(mix)
    assert (out - expected).abs().max() < 1e-3


def test_modelscope_id_without_modelscope_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "modelscope.hub.snapshot_download", None)
    with pytest.raises(SourceError, match="pip install modelscope"):
        EnhanceFRCRN.from_hparams(source="damo/speech_frcrn_ans_cirm_16k")


SEPARATE = """
from speechbrain_ext.inference import SeparateMossFormer
mix = 0.1 * torch.randn(2, 8003, generator=torch.Generator().manual_seed(0))
model = SeparateMossFormer.from_hparams(source={source!r}, revision={revision!r})
assert model.sample_rate == 16000, model.sample_rate
torch.save(model.separate_batch(mix), {out!r})
"""


def test_mossformer2_official_repo_from_offline_cache(tmp_path):
    """alibabasglab/MossFormer2_SS_16K through huggingface_hub's cache, as ClearerVoice-Studio
    publishes it: official size, ``module.``-prefixed keys in ``{'model': ...}``."""
    reference = make_reference_mossformer2(dim=512, num_blocks=24, seed=2)
    home = str(tmp_path / "hf")
    fill_hf_cache(home, "alibabasglab/MossFormer2_SS_16K", {COMMIT_A: clearervoice_files(reference.state_dict())},
                  main=COMMIT_A)
    code = SEPARATE.format(source="alibabasglab/MossFormer2_SS_16K", revision=None, out=str(tmp_path / "out.pt"))
    out = run_offline(code, {"HF_HOME": home}, tmp_path)
    mix = 0.1 * torch.randn(2, 8003, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = torch.stack(reference(mix), dim=-1)
    assert (out - expected).abs().max() <= 1e-4 * expected.abs().max()


def test_mossformer2_local_official_folder(tmp_path):
    """A downloaded (or written) ClearerVoice-Studio folder; its configuration.json, when there,
    sizes the model and sets the rate (here 8 kHz, not the card's 16 kHz)."""
    reference = make_reference_mossformer2(dim=32, num_blocks=1, seed=6)
    model = mossformer2_from_official(reference.state_dict(), **mossformer2_kwargs(32, 1))
    mossformer2_to_official(model, tmp_path / "folder", sample_rate=8000)
    separator = SeparateMossFormer.from_hparams(source=str(tmp_path / "folder"))
    assert separator.sample_rate == 8000
    assert type(separator.mods.masknet).__name__ == "MossFormer2MaskNet"
    mix = 0.1 * torch.randn(1, 3001, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = torch.stack(reference(mix), dim=-1)
    assert (separator.separate_batch(mix) - expected).abs().max() <= 1e-4 * expected.abs().max()


def test_wrong_model_kind_is_refused():
    with pytest.raises(SourceError, match="mossformer-8k model, not a frcrn-16k"):
        EnhanceFRCRN.from_hparams(source="iic/speech_mossformer_separation_temporal_8k")
    with pytest.raises(SourceError, match="frcrn-16k model, not a mossformer-8k or mossformer2-ss-16k"):
        SeparateMossFormer.from_hparams(source="alibabasglab/FRCRN_SE_16K")
    with pytest.raises(SourceError, match="mossformer2-ss-16k model, not a frcrn-16k"):
        EnhanceFRCRN.from_hparams(source="alibabasglab/MossFormer2_SS_16K")

"""Corpus scale: torchrun shares, packed short files, manifests in and out, resume after a kill."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf
import torch

from speechbrain_ext.inference import EnhanceFRCRN
from speechbrain_ext.inference.corpus import (
    ManifestError,
    balanced_shares,
    pack_by_length,
    read_manifest,
)
from speechbrain_ext.lobes.models.frcrn import FRCRN
from speechbrain_ext.synthetic import speech_like

from conftest import OFFICIAL_FRCRN_KWARGS, SMALL_FRCRN_CARD, randomize_

PYTHON = sys.executable
CLI = os.path.join(os.path.dirname(sys.executable), "speechbrain-ext")
TORCHRUN = [PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "speechbrain_ext.cli"]
SECONDS = [0.5, 1.0, 3.0, 1.3, 0.7, 2.2, 6.0, 0.9, 1.7, 0.6]


def noisy(seconds, rate, seed):
    rng = np.random.RandomState(seed)
    return (0.3 * speech_like(seconds, rate, seed=seed) + 0.05 * rng.randn(int(seconds * rate))).astype(np.float32)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A folder of files of mixed lengths (one at 22.05 kHz, one stereo) and the single-process outputs."""
    root = tmp_path_factory.mktemp("corpus")
    folder = root / "in"
    (folder / "sub").mkdir(parents=True)
    for index, seconds in enumerate(SECONDS):
        path = folder / ("sub" if index % 2 else "") / f"f{index}.wav"
        if index == 3:
            sf.write(path, noisy(seconds, 22050, index), 22050)
        elif index == 4:
            sf.write(path, np.stack([noisy(seconds, 16000, index), noisy(seconds, 16000, 99)], axis=1), 16000)
        else:
            sf.write(path, noisy(seconds, 16000, index), 16000)
    model = root / "model"
    model.mkdir()
    (model / "hyperparams.yaml").write_text(SMALL_FRCRN_CARD)
    torch.manual_seed(0)
    frcrn = FRCRN(channels=8, fsmn_hidden=8)
    randomize_(frcrn, 3)
    torch.save(frcrn.state_dict(), model / "model.ckpt")
    single = root / "single"
    result = subprocess.run([CLI, "enhance", folder, "-o", single, "--model", model, "--subtype", "FLOAT", "--quiet"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    return {"root": root, "in": folder, "model": model, "single": single}


def outputs(folder):
    return sorted(os.path.relpath(os.path.join(r, f), folder) for r, _, files in os.walk(folder) for f in files)


def assert_same_outputs(folder, reference, tolerance=1e-5):
    assert outputs(folder) == outputs(reference)
    for name in outputs(reference):
        ours, theirs = sf.read(os.path.join(folder, name))[0], sf.read(os.path.join(reference, name))[0]
        assert ours.shape == theirs.shape, name
        assert np.abs(ours - theirs).max() <= tolerance * max(1.0, np.abs(theirs).max()), name


def read_rows(path):
    with open(path, newline="") as stream:
        return list(csv.DictReader(stream))


def test_balanced_shares_put_a_long_file_apart_from_many_short_ones():
    durations = [1.0] * 1000 + [7200.0]
    shares = balanced_shares(durations, 2)
    assert sorted(shares[0] + shares[1]) == list(range(1001))  # every job exactly once
    assert [1000] in shares  # the 2-hour file alone on one rank
    loads = [sum(durations[i] for i in share) for share in balanced_shares(list(np.linspace(1, 30, 200)), 3)]
    assert max(loads) - min(loads) <= 30  # within one file of even
    assert balanced_shares(durations, 4) == balanced_shares(list(durations), 4)  # deterministic


def test_pack_by_length_groups_neighbours_and_keeps_long_files_alone():
    groups = pack_by_length([3.0, 1.0, 60.0, 2.0, 1.5, 4.0], batch_size=2, max_seconds=10)
    assert groups == [[1, 4], [3, 0], [5], [2]]
    assert pack_by_length([3.0, 1.0], batch_size=1, max_seconds=10) == [[0], [1]]


@pytest.mark.parametrize("size", ["small", "official"])
def test_frcrn_batch_of_different_lengths_equals_each_alone(size):
    torch.manual_seed(0)
    model = FRCRN(**OFFICIAL_FRCRN_KWARGS) if size == "official" else FRCRN(channels=16, fsmn_hidden=16)
    randomize_(model, 1)
    model.eval()
    lengths = [640, 1000, 5120, 7001] if size == "official" else [640, 1000, 5120, 16000, 7001]
    noisy_batch = torch.randn(len(lengths), max(lengths) + 37)
    for fused in (False, True):
        if fused:
            model.fuse_for_inference()
        with torch.no_grad():
            together = model(noisy_batch, lengths=torch.tensor(lengths))
            for index, length in enumerate(lengths):
                alone = model(noisy_batch[index : index + 1, :length])[0]
                assert (together[index, :length] - alone).abs().max() <= 1e-4 * max(1.0, alone.abs().max())
                assert not together[index, length:].any()  # the padding comes back as zeros


def test_frcrn_lengths_in_float64_are_exact():
    torch.manual_seed(0)
    model = FRCRN(channels=8, fsmn_hidden=8).double().eval()
    randomize_(model, 2)
    batch = torch.randn(3, 4000, dtype=torch.float64)
    with torch.no_grad():
        together = model(batch, lengths=[900, 4000, 2500])
        for index, length in enumerate([900, 4000, 2500]):
            assert (together[index, :length] - model(batch[index : index + 1, :length])[0]).abs().max() < 1e-10
    with pytest.raises(ValueError, match="lengths must give each"):
        model(batch, lengths=[100, 4000, 2500])


def test_enhance_files_equals_enhance_file(corpus, tmp_path):
    enhancer = EnhanceFRCRN.from_hparams(source=str(corpus["model"]), savedir=str(tmp_path / "load"))
    inputs = sorted(str(p) for p in corpus["in"].rglob("*.wav"))
    for channels in ("mix", "all"):
        packed = [str(tmp_path / f"packed-{channels}-{i}.wav") for i in range(len(inputs))]
        results = enhancer.enhance_files(inputs, packed, channels=channels, output_rate="input", subtype="FLOAT")
        assert all(isinstance(result, dict) for result in results), results
        for index, name in enumerate(inputs):
            alone = str(tmp_path / f"alone-{channels}-{index}.wav")
            enhancer.enhance_file(name, alone, channels=channels, output_rate="input", subtype="FLOAT")
            ours, theirs = sf.read(packed[index])[0], sf.read(alone)[0]
            assert ours.shape == theirs.shape
            assert np.abs(ours - theirs).max() <= 1e-5 * max(1.0, np.abs(theirs).max()), name


def test_torchrun_two_processes_give_the_single_process_outputs(corpus, tmp_path):
    out, manifest = tmp_path / "out", tmp_path / "done.csv"
    command = [*TORCHRUN, "enhance", corpus["in"], "-o", out, "--model", corpus["model"], "--subtype", "FLOAT",
               "--batch-size", "4", "--manifest-out", manifest, "--quiet"]
    result = subprocess.run(list(map(str, command)), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("enhancement: 10 done, 0 skipped") == 1  # rank 0's summary only
    assert_same_outputs(out, corpus["single"])
    rows = read_rows(manifest)
    assert sorted(row["ID"] for row in rows) == sorted(os.path.splitext(name)[0] for name in outputs(out))
    assert {row["status"] for row in rows} == {"done"} and {row["rank"] for row in rows} == {"0", "1"}
    loads = [sum(float(row["duration"]) for row in rows if row["rank"] == rank) for rank in "01"]
    assert abs(loads[0] - loads[1]) <= max(SECONDS)  # balanced by duration
    for row in rows:
        assert os.path.isfile(row["output"]) and os.path.isfile(row["input"]) and float(row["seconds"]) > 0


def _worker_pids(parent):
    children = subprocess.run(["pgrep", "-P", str(parent)], capture_output=True, text=True).stdout.split()
    return [int(pid) for pid in children]


def test_killed_rank_then_rerun_finishes_only_what_is_missing(corpus, tmp_path):
    folder = tmp_path / "many"
    folder.mkdir()
    for index in range(24):
        sf.write(folder / f"u{index:02d}.wav", noisy(1.0 + (index % 5) * 0.4, 16000, index), 16000)
    model = tmp_path / "model"
    model.mkdir()
    (model / "hyperparams.yaml").write_text(SMALL_FRCRN_CARD.replace("channels: 8", "channels: 48")
                                            .replace("fsmn_hidden: 8", "fsmn_hidden: 48"))
    torch.manual_seed(1)
    torch.save(FRCRN(channels=48, fsmn_hidden=48).state_dict(), model / "model.ckpt")
    out = tmp_path / "out"
    command = list(map(str, [*TORCHRUN, "enhance", folder, "-o", out, "--model", model, "--subtype", "FLOAT",
                             "--quiet", "--manifest-out", tmp_path / "m.csv"]))
    job = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and job.poll() is None:
        if out.exists() and any(name.endswith(".wav") and not name.startswith(".") for name in os.listdir(out)):
            break
        time.sleep(0.05)
    workers = _worker_pids(job.pid)
    assert job.poll() is None and len(workers) == 2, "the job ended before a rank could be killed"
    os.kill(workers[1], signal.SIGKILL)  # one rank dies; torchrun stops the other
    job.communicate(timeout=120)
    assert job.returncode != 0
    finished = [name for name in os.listdir(out) if not name.startswith(".")]
    assert 0 < len(finished) < 24
    for name in finished:  # whatever is there is complete
        assert sf.info(out / name).frames > 0

    rerun = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"{24 - len(finished)} done, {len(finished)} skipped (output exists)" in rerun.stdout
    assert sorted(os.listdir(out)) == [f"u{index:02d}.wav" for index in range(24)]  # each once, no temporaries
    single = tmp_path / "single"
    result = subprocess.run(list(map(str, [CLI, "enhance", folder, "-o", single, "--model", model, "--subtype", "FLOAT",
                                           "--quiet"])), capture_output=True, text=True)
    assert result.returncode == 0
    assert_same_outputs(out, single)
    assert {row["status"] for row in read_rows(tmp_path / "m.csv")} == {"done", "exists"}


def test_manifests_in_and_out_round_trip(corpus, tmp_path):
    from speechbrain.dataio.dataset import DynamicItemDataset

    files = sorted(corpus["in"].rglob("*.wav"))
    manifest = tmp_path / "corpus.csv"
    with open(manifest, "w") as stream:
        stream.write("ID,duration,wav\n")
        for index, path in enumerate(files):
            stream.write(f"utt{index},{sf.info(path).duration},$data_root/{path.relative_to(corpus['in'])}\n")
    out, done = tmp_path / "out", tmp_path / "done.csv"
    command = [CLI, "enhance", "--manifest", manifest, "--data-root", corpus["in"], "-o", out, "--model",
               corpus["model"], "--subtype", "FLOAT", "--manifest-out", done, "--quiet", "--batch-size", "3"]
    result = subprocess.run(list(map(str, command)), capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert_same_outputs(out, corpus["single"])  # the names mirror the corpus's folders

    # SpeechBrain reads the output manifest as a dataset of the enhanced files.
    dataset = DynamicItemDataset.from_csv(str(done))
    dataset.set_output_keys(["id", "output", "status"])
    items = list(dataset)
    assert len(items) == len(files) and {item["status"] for item in items} == {"done"}
    assert all(os.path.isfile(item["output"]) for item in items)

    # A rerun from the output manifest (its 'input' column) finds everything done.
    again = subprocess.run(list(map(str, [CLI, "enhance", "--manifest", done, "-o", out, "--model", corpus["model"],
                                          "--manifest-out", done, "--quiet"])), capture_output=True, text=True)
    assert again.returncode == 0 and f"0 done, {len(files)} skipped (output exists)" in again.stdout
    assert {row["status"] for row in read_rows(done)} == {"exists"}

    # JSON lines naming the enhanced files: a second stage reads the first stage's outputs.
    lines = tmp_path / "enhanced.jsonl"
    lines.write_text("".join(json.dumps({"audio": row["output"]}) + "\n" for row in read_rows(done)))
    stage2 = subprocess.run(list(map(str, [CLI, "enhance", "--manifest", lines, "-o", tmp_path / "twice", "--model",
                                           corpus["model"], "--quiet"])), capture_output=True, text=True)
    assert stage2.returncode == 0 and f"{len(files)} done" in stage2.stdout


def test_manifest_errors_are_one_line_and_touch_nothing(corpus, tmp_path):
    out = tmp_path / "out"
    no_paths = tmp_path / "bad.csv"
    no_paths.write_text("ID,duration,speaker\nu1,1.0,spk1\n")
    placeholder = tmp_path / "root.csv"
    placeholder.write_text("ID,wav\nu1,$data_root/a.wav\n")
    foreign = tmp_path / "notes.csv"
    foreign.write_text("my,own,notes\n")
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"wav": str(next(corpus["in"].glob("*.wav")))}) + "\n")
    cases = [
        (["--manifest", no_paths], "no column of audio paths"),
        (["--manifest", no_paths, "--manifest-column", "path"], "no column 'path'"),
        (["--manifest", placeholder], "give --data-root"),
        (["--manifest", tmp_path / "missing.csv"], "cannot read the manifest"),
        (["--manifest", good, corpus["in"]], "one of the two"),
        ([], "one of the two"),
        (["--manifest", good, "--manifest-out", foreign], "not a manifest speechbrain-ext wrote"),
    ]
    for extra, message in cases:
        result = subprocess.run(list(map(str, [CLI, "enhance", *extra, "-o", out, "--model", corpus["model"], "--quiet"])),
                                capture_output=True, text=True)
        assert result.returncode != 0 and message in result.stderr, (extra, result.stderr)
        assert "Traceback" not in result.stderr and not out.exists()
    assert foreign.read_text() == "my,own,notes\n"
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ManifestError, match="lists no items"):
        read_manifest(tmp_path / "empty.jsonl")


def test_torchrun_separation_writes_every_speaker_once(models, tmp_path):
    from speechbrain_ext.synthetic import two_speaker_mixture

    folder = tmp_path / "mixes"
    folder.mkdir()
    for index, seconds in enumerate([0.6, 1.4, 1.0]):
        sf.write(folder / f"m{index}.wav", two_speaker_mixture(seconds, 8000, seed=index)[0], 8000)
    runs = {}
    for name, launcher in (("single", [CLI]), ("multi", TORCHRUN)):
        out = tmp_path / name
        result = subprocess.run(list(map(str, [*launcher, "separate", folder, "-o", out, "--model", models["separate"],
                                               "--subtype", "FLOAT", "--quiet", "--manifest-out", tmp_path / f"{name}.csv"])),
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stdout + result.stderr
        runs[name] = out
    assert outputs(runs["single"]) == [f"m{i}_spk{s}.wav" for i in range(3) for s in (1, 2)]
    assert_same_outputs(runs["multi"], runs["single"])
    rows = read_rows(tmp_path / "multi.csv")
    assert all(os.path.isfile(row["output_spk1"]) and os.path.isfile(row["output_spk2"]) for row in rows)


def test_each_process_takes_its_own_gpu(monkeypatch):
    from speechbrain_ext.inference.corpus import Workers

    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "5")
    monkeypatch.setenv("LOCAL_RANK", "1")
    workers = Workers()  # (not entered: no process group)
    assert workers.device("cuda") == "cuda:1" and workers.device("cuda:3") == "cuda:3" and workers.device(None) is None
    assert (workers.rank, workers.world_size, workers.main) == (5, 4, False)

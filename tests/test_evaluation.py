"""speechbrain_ext.evaluation: metrics against their reference packages, files, CSVs, plot, CLI."""

import argparse
import csv
import math
import os

import numpy as np
import pesq
import pystoi
import pytest
import soundfile as sf

from speechbrain_ext import evaluation
from speechbrain_ext.evaluation import (
    EvaluationError,
    add_evaluate_arguments,
    compute_metrics,
    evaluate_folders,
    match_files,
    run_evaluate,
    si_snr,
)
from speechbrain_ext.testing.audio import mix_at_snr, pink_noise, speech_like, white_noise


def noisy_pair(seconds=2.0, rate=16000, snr=5.0, seed=0):
    clean = speech_like(seconds, rate, seed=seed)
    noisy, _ = mix_at_snr(clean, pink_noise(seconds, rate, seed=seed + 100), snr)
    return clean.astype(np.float64), noisy.astype(np.float64)


def test_pesq_and_stoi_agree_with_the_packages():
    clean, noisy = noisy_pair()
    assert evaluation.pesq_wb(clean, noisy, 16000) == pytest.approx(pesq.pesq(16000, clean, noisy, "wb"), abs=1e-6)
    assert evaluation.pesq_nb(clean, noisy, 16000) == pytest.approx(pesq.pesq(16000, clean, noisy, "nb"), abs=1e-6)
    assert evaluation.stoi(clean, noisy, 16000) == pytest.approx(pystoi.stoi(clean, noisy, 16000), abs=1e-9)

    clean8, noisy8 = noisy_pair(rate=8000)
    assert evaluation.pesq_nb(clean8, noisy8, 8000) == pytest.approx(pesq.pesq(8000, clean8, noisy8, "nb"), abs=1e-6)
    assert math.isnan(evaluation.pesq_wb(clean8, noisy8, 8000))  # no wideband content at 8 kHz


def test_pesq_of_silence_is_nan_with_a_warning():
    with pytest.warns(UserWarning, match="PESQ"):
        assert math.isnan(evaluation.pesq_wb(np.zeros(16000), np.zeros(16000), 16000))


def test_si_snr_by_hand():
    target = np.array([1.0, -1.0, 1.0, -1.0])
    orthogonal = np.array([1.0, 1.0, -1.0, -1.0])  # zero-mean and orthogonal to the target
    # Projection 2 * target (energy 16), residual the orthogonal part (energy 4): 10 log10(4).
    assert si_snr(2 * target + orthogonal, target) == pytest.approx(10 * np.log10(16 / 4), abs=1e-6)
    # Invariant to the scale of the estimate and to constant offsets (zero-mean first).
    assert si_snr(-0.3 * (2 * target + orthogonal) + 5.0, target) == pytest.approx(10 * np.log10(4), abs=1e-6)
    clean, noisy = noisy_pair(snr=5.0)
    assert si_snr(noisy, clean) == pytest.approx(5.0, abs=0.3)  # mixed at 5 dB (SI-SNR close to SNR)


def test_compute_metrics_reports_noisy_and_improvement():
    clean, noisy = noisy_pair(snr=0.0)
    enhanced = clean + 0.1 * (noisy - clean)  # noise 20 dB down
    metrics = compute_metrics(clean, enhanced, 16000, noisy=noisy)
    assert metrics["si_snr_improvement"] == pytest.approx(metrics["si_snr"] - metrics["si_snr_noisy"])
    assert metrics["si_snr_improvement"] == pytest.approx(20.0, abs=0.5)
    assert metrics["pesq_wb"] > metrics["pesq_wb_noisy"] and metrics["stoi"] > metrics["stoi_noisy"]


def write_dns_style_folders(root, count=3, rate=16000, seconds=1.5):
    """clean/clean_fileid_N.wav, noisy/<...>_fileid_N.wav and enhanced/<same as noisy>."""
    folders = {name: os.path.join(root, name) for name in ("clean", "noisy", "enhanced")}
    for folder in folders.values():
        os.makedirs(folder)
    for fileid in range(count):
        clean, noisy = noisy_pair(seconds, rate, snr=float(fileid * 3), seed=fileid)
        enhanced = clean + 0.3 * (noisy - clean)
        name = f"clnsp{fileid}_pink_snr{fileid * 3}_tl-25_fileid_{fileid}.wav"
        sf.write(os.path.join(folders["clean"], f"clean_fileid_{fileid}.wav"), clean, rate, subtype="FLOAT")
        sf.write(os.path.join(folders["noisy"], name), noisy, rate, subtype="FLOAT")
        # Enhancers may drop the last few samples (FRCRN returns whole frames).
        sf.write(os.path.join(folders["enhanced"], name), enhanced[:-100], rate, subtype="FLOAT")
    return folders


def test_evaluate_folders_writes_per_file_rows_averages_and_plot(tmp_path):
    folders = write_dns_style_folders(str(tmp_path))
    csv_path, png_path = str(tmp_path / "out" / "results.csv"), str(tmp_path / "out" / "spectrograms.png")
    result = evaluate_folders(folders["clean"], folders["enhanced"], folders["noisy"], csv_path, png_path)

    with open(csv_path, newline="", encoding="utf-8") as stream:
        rows = list(csv.DictReader(stream))
    assert [row["id"] for row in rows] == ["fileid_0", "fileid_1", "fileid_2", "avg"]
    for row, item in zip(rows, result.rows):
        clean, _ = sf.read(row["clean"])
        enhanced, _ = sf.read(row["enhanced"])
        noisy, _ = sf.read(row["noisy"])
        length = len(enhanced)  # scored on the common part
        assert float(row["si_snr"]) == pytest.approx(si_snr(enhanced, clean[:length]), abs=1e-4)
        assert float(row["si_snr_noisy"]) == pytest.approx(si_snr(noisy[:length], clean[:length]), abs=1e-4)
        assert float(row["pesq_wb"]) == pytest.approx(pesq.pesq(16000, clean[:length], enhanced, "wb"), abs=1e-4)
        assert float(row["stoi"]) == pytest.approx(item["stoi"], abs=1e-4)
    for metric in ("pesq_wb", "pesq_nb", "stoi", "si_snr", "si_snr_improvement"):
        average = np.mean([float(row[metric]) for row in rows[:-1]])
        assert float(rows[-1][metric]) == pytest.approx(average, abs=1e-3)
        assert result.summary["enhanced"][metric] == pytest.approx(average, abs=1e-3)

    with open(evaluation.summary_path_for(csv_path), newline="", encoding="utf-8") as stream:
        summary = {row["system"]: row for row in csv.DictReader(stream)}
    assert list(summary) == ["noisy", "enhanced"]
    assert float(summary["noisy"]["si_snr"]) == pytest.approx(np.mean([float(r["si_snr_noisy"]) for r in rows[:-1]]),
                                                             abs=1e-3)
    assert float(summary["enhanced"]["si_snr"]) > float(summary["noisy"]["si_snr"])

    with open(png_path, "rb") as stream:
        header = stream.read(24)
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")
    assert width >= 3 * 300 and height >= 3 * 200  # 3 files x (noisy, enhanced, clean) panels


def run_cli(*argv):
    parser = add_evaluate_arguments(argparse.ArgumentParser())
    return run_evaluate(parser.parse_args(list(argv)))


def test_command_prints_the_table(tmp_path, capsys):
    folders = write_dns_style_folders(str(tmp_path), count=2)
    status = run_cli("--clean", folders["clean"], "--enhanced", folders["enhanced"], "--noisy", folders["noisy"],
                     "--csv", str(tmp_path / "r.csv"))
    output = capsys.readouterr().out
    assert status == 0
    assert "| noisy    |" in output and "| enhanced |" in output and "PESQ-WB" in output
    assert os.path.isfile(tmp_path / "r_summary.csv")
    parser = add_evaluate_arguments(argparse.ArgumentParser())
    assert parser.parse_args(["--clean", "a", "--enhanced", "b"]).task == "enhancement"


def test_matching_by_name(tmp_path):
    for folder in ("ref", "out"):
        os.makedirs(tmp_path / folder)
        for name in ("a.wav", "b.flac"):
            sf.write(str(tmp_path / folder / name), white_noise(0.1, 16000, seed=1), 16000)
    items = match_files(str(tmp_path / "ref"), str(tmp_path / "out"))
    assert [(item.id, os.path.basename(item.enhanced)) for item in items] == [("a", "a.wav"), ("b", "b.flac")]


@pytest.mark.parametrize(
    "breakage, message",
    [
        ("missing_enhanced", "1 of 2 clean files have no enhanced file with the same fileid"),
        ("unrelated_names", "have no enhanced file with the same name"),
        ("sample_rate", "at 16000 Hz but the enhanced file .* is at 8000 Hz; resample it"),
        ("length", "differ in length"),
        ("no_folder", "the enhanced folder .* does not exist"),
        ("empty_folder", "has no audio files"),
    ],
)
def test_bad_input_is_one_clear_error(tmp_path, capsys, breakage, message):
    folders = write_dns_style_folders(str(tmp_path), count=2, seconds=0.5)
    enhanced = folders["enhanced"]
    names = sorted(os.listdir(enhanced))
    if breakage == "missing_enhanced":
        os.remove(os.path.join(enhanced, names[0]))
    elif breakage == "unrelated_names":
        for index, name in enumerate(names):
            os.rename(os.path.join(enhanced, name), os.path.join(enhanced, f"take{index}.wav"))
    elif breakage == "sample_rate":
        sf.write(os.path.join(enhanced, names[1]), np.zeros(4000), 8000)
    elif breakage == "length":
        sf.write(os.path.join(enhanced, names[1]), np.zeros(2000), 16000)
    elif breakage == "no_folder":
        enhanced = str(tmp_path / "nowhere")
    elif breakage == "empty_folder":
        for name in names:
            os.remove(os.path.join(enhanced, name))
    with pytest.raises(EvaluationError, match=message):
        evaluate_folders(folders["clean"], enhanced)
    assert run_cli("--clean", folders["clean"], "--enhanced", enhanced) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("evaluate: error: ") and "\n" not in error


def test_resample_option_accepts_other_rates(tmp_path):
    folders = write_dns_style_folders(str(tmp_path), count=1, seconds=1.0)
    name = os.listdir(folders["enhanced"])[0]
    path = os.path.join(folders["enhanced"], name)
    enhanced, rate = sf.read(path)
    sf.write(path, evaluation._resample(enhanced, rate, 48000), 48000, subtype="FLOAT")
    result = evaluate_folders(folders["clean"], folders["enhanced"], resample=True)
    assert result.rows[0]["sample_rate"] == 16000
    assert result.rows[0]["si_snr"] > 5

"""The installable package: import guard for the torch/torchaudio pair, console script."""

import importlib
import os
import subprocess
import sys

import pytest

import speechbrain_ext
from speechbrain_ext import _torch_pair
from speechbrain_ext._torch_pair import TorchPairError, check_torch_pair, mismatch_message


def console_script():
    return os.path.join(os.path.dirname(sys.executable), "speechbrain-ext")


def test_installed_pair_is_accepted():
    check_torch_pair()  # the venv's pinned pair
    assert mismatch_message("2.11.0+cu130", "2.11.0+cu130") is None
    assert mismatch_message("2.11.0", "2.11.0") is None


@pytest.mark.parametrize(
    "torch_version,torchaudio_version",
    [("2.15.0+cu132", "2.11.0+cu130"), ("2.11.0+cu132", "2.11.0+cu130"), ("2.11.0", None)],
)
def test_mismatched_pair_fails_import_with_one_sentence(monkeypatch, torch_version, torchaudio_version):
    monkeypatch.setattr(_torch_pair, "installed_versions", lambda: (torch_version, torchaudio_version))
    with pytest.raises(TorchPairError) as error:
        importlib.reload(speechbrain_ext)
    message = str(error.value)
    assert "\n" not in message and message.endswith(".")
    assert "pip install torch==2.11.0 torchaudio==2.11.0" in message
    if torchaudio_version:
        assert torch_version in message and torchaudio_version in message
    else:
        assert "torchaudio, which is not installed" in message
    assert isinstance(error.value, ImportError)


def test_torchaudio_that_fails_to_load_is_explained(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchaudio", None)  # makes `import torchaudio` fail
    with pytest.raises(TorchPairError, match="torchaudio cannot be loaded with this torch.*pip install"):
        check_torch_pair(("2.11.0", "2.11.0"))


def test_console_script_lists_subcommands_and_version():
    help_text = subprocess.run([console_script(), "--help"], capture_output=True, text=True, check=True).stdout
    for command in ("demo", "enhance", "separate", "convert", "evaluate"):
        assert command in help_text, command
    version = subprocess.run([console_script(), "--version"], capture_output=True, text=True, check=True).stdout
    assert version.strip() == f"speechbrain-ext {speechbrain_ext.__version__}"


def test_demo_command_exits_zero():
    result = subprocess.run([console_script(), "demo"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr

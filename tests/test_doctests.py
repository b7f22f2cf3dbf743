"""Every docstring Example in the library runs and shows what it claims."""

import doctest
import importlib
import pkgutil

import pytest

import speechbrain_ext

MODULES = sorted(
    info.name for info in pkgutil.walk_packages(speechbrain_ext.__path__, prefix="speechbrain_ext.")
)


@pytest.mark.parametrize("module_name", MODULES)
def test_docstring_examples(module_name):
    module = importlib.import_module(module_name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {module_name}"

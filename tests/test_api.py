"""The public API: every name resolves to what it says, even after its module has been imported."""

import importlib
import pkgutil

import spectrum_llm


def test_api_names_survive_importing_every_submodule():
    for mod in pkgutil.iter_modules(spectrum_llm.__path__):
        if mod.name != "__main__":
            importlib.import_module(f"spectrum_llm.{mod.name}")
    for name in spectrum_llm.__all__:
        value = getattr(spectrum_llm, name)
        assert not isinstance(value, type(spectrum_llm)), f"spectrum_llm.{name} is a module, not the API object"
    assert callable(spectrum_llm.scan) and callable(spectrum_llm.freeze) and callable(spectrum_llm.select)

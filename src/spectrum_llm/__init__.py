"""spectrum-llm: train only the most informative weight matrices of an LLM (Spectrum, arXiv 2406.06623).

The pipeline, one module per step:
checkpoint -> tensors (``checkpoint``) -> spectra (``spectra``) -> scores (``estimators``, ``scanning``)
-> selection (``selection``, joining ``select_config``, ``sources``, ``rules``, ``selection_file``,
``selection_text``) -> exports / frozen model (``exports``, ``freezing``; Axolotl's pattern format:
``axolotl``; meta-device model skeletons: ``models``) -> preflight (``preflight``) -> training (``training``).
Seeing a scan: ``grids`` (the layer x type grid), ``figures``, ``html_report`` (``report``), ``tables``
(``spectrum show``) and ``comparison`` (``compare``); ``params`` counts parameters.

Names are imported lazily so that ``import spectrum_llm`` stays fast and does not pull in torch.
"""

from importlib import import_module

__version__ = "0.1.0"

_API = {
    "SpectrumError": "errors",
    "ModuleScore": "results",
    "ScanResult": "results",
    "load_scan": "scan_files",
    "scan": "scanning",
    "score_modules": "gradscore",
    "ScoreConfig": "gradscore",
    "combine_scores": "gradscore",
    "select": "selection",
    "Selection": "selection",
    "SelectConfig": "selection",
    "select_to": "selection",
    "freeze": "freezing",
    "FreezeSummary": "freezing",
    "load_selection": "selection",
    "write_selection": "exports",
    "lora_config": "lora",
    "check": "preflight",
    "CheckReport": "preflight",
    "LoraPlan": "lora",
    "SpectrumCallback": "integrations",
    "train": "training",
    "TrainConfig": "training",
    "report": "html_report",
    "compare": "comparison",
    "ScanDiff": "comparison",
}

__all__ = ["__version__", *_API]


def __getattr__(name):
    if name in _API:
        return getattr(import_module(f".{_API[name]}", __name__), name)
    raise AttributeError(f"module 'spectrum_llm' has no attribute {name!r}")

"""GPU benchmark: scan speed against the reference method, and the training cost of each method, in one command.

    PYTHONPATH=src python3 benchmarks/gpu.py --out OUT          # one H100-class GPU, under 8 minutes
    PYTHONPATH=src python3 benchmarks/gpu.py --tiny --out OUT   # tiny shapes on the CPU, seconds (the tests run this)

(a) ``scan``: a synthetic checkpoint with Llama-3.1-8B's layer shapes (``--scan-layers`` decoder layers plus the
    128256 x 4096 embedding and lm_head, random bf16 weights written to local disk) is scanned by
    ``spectrum_llm.scan(device=...)`` and by the reference method (the model loaded in fp32 onto the GPU, then
    ``torch.linalg.svdvals`` per module, as the reference tool does), each in a fresh process. The singular values
    of a few matrices are also checked against the float64 CPU computation.
(b) ``train``: Llama-3.2-1B and -3B shapes (``--models``; 8B too if asked), random weights built on the GPU from
    the config, bf16 weights, fp32 master copies and AdamW states for the trained parameters (as
    ``spectrum_llm.train`` keeps them), autocast bf16, gradient checkpointing on. Methods: full fine-tuning,
    Spectrum-25 and -50 (selected from the model's published scan in ``benchmarks/data/``) and LoRA on all linear
    modules at the rank whose size matches Spectrum-25's linear part. Each method runs in a fresh process: peak
    CUDA memory and median step time at a fixed micro-batch, then the largest micro-batch that fits (doubling,
    then bisection, capped and time-limited) with its tokens/s.

Results are written after every measurement to ``OUT/gpu.json`` and ``OUT/gpu.md`` (so a run cut short still
leaves what it measured); progress lines go to stdout. ``--budget-s`` skips what would not finish in time.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file (as on the GPU machine): the repository root on the path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.gpu_common import DATA, METHODS, SHAPES, SRC, fail, say
from benchmarks.gpu_report import Report, markdown
from benchmarks.gpu_scan import child_scan_ours, child_scan_reference, part_scan, scan_bytes
from benchmarks.gpu_train import child_train, part_train

NEEDED = ("torch", "transformers", "peft", "safetensors", "numpy")
CHILDREN = {"scan-ours": child_scan_ours, "scan-reference": child_scan_reference, "train": child_train}

# ------------------------------------------------------------------------------------------ pre-flight


def preflight(args) -> dict:
    """Check and print everything the run needs before doing any work; exit 2 with the reason otherwise."""
    missing = [m for m in NEEDED if importlib.util.find_spec(m) is None]
    if missing:
        fail(
            f"missing Python packages: {', '.join(missing)}. This benchmark needs {', '.join(NEEDED)} "
            "(accelerate optional); install them, or carry their wheels to this machine."
        )
    sys.path.insert(0, str(SRC))
    try:
        for mod in (
            "spectrum_llm",
            "spectrum_llm.freezing",
            "spectrum_llm.scanning",
            "spectrum_llm.selection",
            "spectrum_llm.training",
        ):
            importlib.import_module(mod)
    except Exception as e:
        fail(
            f"cannot import spectrum_llm from {SRC} ({type(e).__name__}: {e}). Run from the repository root "
            "with PYTHONPATH=src."
        )
    import numpy
    import peft
    import safetensors
    import torch
    import transformers

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "safetensors": safetensors.__version__,
        "numpy": numpy.__version__,
        "accelerate": _version("accelerate"),
        "cpus": os.cpu_count(),
        "device": args.device,
    }
    if args.device.startswith("cuda"):
        if not torch.cuda.is_available():
            fail(
                f"--device {args.device} but torch {torch.__version__} sees no CUDA GPU. Use a GPU machine, or "
                "--tiny (CPU) to check the script."
            )
        dev = torch.device(args.device)
        props = torch.cuda.get_device_properties(dev)
        free, total = torch.cuda.mem_get_info(dev)
        info.update(
            gpu=props.name,
            capability=f"{props.major}.{props.minor}",
            gpu_memory_gib=round(total / 2**30, 1),
            gpu_free_gib=round(free / 2**30, 1),
            cuda=torch.version.cuda,
        )
        if not torch.cuda.is_bf16_supported():
            fail(f"{props.name} has no bf16 support; the training part needs it (Ampere or newer).")
    for key in args.models:
        if not (DATA / SHAPES[key]["scan"]).is_file():
            fail(f"the published scan {DATA / SHAPES[key]['scan']} is missing: it ships in benchmarks/data/.")
    need = scan_bytes(args) * 1.1 if "scan" in args.parts else 0
    args.work.mkdir(parents=True, exist_ok=True)
    free_disk = shutil.disk_usage(args.work).free
    if free_disk < need:
        fail(
            f"{args.work} has {free_disk / 2**30:.1f} GiB free; the synthetic checkpoint needs {need / 2**30:.1f} "
            "GiB. Pass --work on a larger disk or fewer --scan-layers."
        )
    info["work"] = str(args.work)
    say("environment: " + ", ".join(f"{k}={v}" for k, v in info.items()))
    return info


def _version(mod: str) -> str | None:
    try:
        return importlib.import_module(mod).__version__
    except Exception:
        return None


# ------------------------------------------------------------------------------------------ main


def parse(argv: list[str] | None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for gpu.json and gpu.md")
    ap.add_argument("--tiny", action="store_true", help="tiny shapes on the CPU (seconds): checks the script")
    ap.add_argument("--device", default=None, help="cuda (default), cuda:N, or cpu (the default with --tiny)")
    ap.add_argument("--parts", default="scan,train", help="comma list of: scan, train (run in this order)")
    ap.add_argument("--work", type=Path, default=None, help="local disk for the synthetic checkpoint (default /tmp)")
    ap.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="skip parts that would end after this many seconds (420; 900 with --tiny)",
    )
    ap.add_argument("--scan-layers", type=int, default=None, help="decoder layers in the scan checkpoint (4)")
    ap.add_argument("--scan-timeout-s", type=float, default=None, help="limit for each scan process (120 s)")
    ap.add_argument("--models", default="1b,3b", help="comma list of: 1b, 3b, 8b")
    ap.add_argument("--methods", default=",".join(METHODS), help=f"comma list of: {', '.join(METHODS)}")
    ap.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (1024)")
    ap.add_argument("--micro-batch", type=int, default=None, help="the fixed micro-batch (4)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps at the fixed micro-batch (3)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    ap.add_argument("--max-batch", type=int, default=None, help="cap of the largest-micro-batch search (64)")
    ap.add_argument("--search-s", type=float, default=None, help="time limit of each search (15 s)")
    ap.add_argument("--train-timeout-s", type=float, default=None, help="limit for each training process (75 s)")
    ap.add_argument("--train-min-s", type=float, default=None, help="budget a training process needs to start (35)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    tiny = args.tiny
    defaults = dict(
        budget_s=900 if tiny else 420,
        device="cpu" if tiny else "cuda",
        scan_layers=2 if tiny else 4,
        seq_len=32 if tiny else 1024,
        micro_batch=2 if tiny else 4,
        steps=2 if tiny else 3,
        max_batch=4 if tiny else 64,
        search_s=10 if tiny else 15,
        train_min_s=5 if tiny else 35,
        scan_timeout_s=300 if tiny else 120,
        train_timeout_s=300 if tiny else 75,
    )
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    args.work = args.work or Path(tempfile.gettempdir()) / "spectrum-gpu-bench"
    args.parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    args.models = [m.strip().lower() for m in args.models.split(",") if m.strip()]
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for name, got, known in (
        ("--parts", args.parts, ("scan", "train")),
        ("--models", args.models, tuple(SHAPES)),
        ("--methods", args.methods, METHODS),
    ):
        bad = [x for x in got if x not in known]
        if bad:
            fail(f"{name}: unknown {', '.join(bad)}; choose from {', '.join(known)}.")
    for name in ("scan_layers", "seq_len", "micro_batch", "steps", "max_batch"):
        if getattr(args, name) < 1:
            fail(f"--{name.replace('_', '-')} must be at least 1.")
    return args


def main(argv: list[str] | None = None) -> None:
    if argv is None and "--worker" in sys.argv:  # one measurement, in its own process (gpu_common.run_measurement)
        spec = json.loads(Path(sys.argv[sys.argv.index("--worker") + 1]).read_text())
        spec["result"] = sys.argv[sys.argv.index("--result") + 1]
        sys.path.insert(0, str(SRC))
        CHILDREN[spec["kind"]](spec)
        return
    start = time.monotonic()
    args = parse(argv)
    env = preflight(args)
    deadline = start + args.budget_s
    settings = {
        k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k not in ("worker", "result", "out")
    }
    report = Report(args.out, settings, env)
    report.save()
    say(f"parts {', '.join(args.parts)}; budget {args.budget_s:.0f} s; results -> {args.out}")
    for part in args.parts:  # in the order given
        {"scan": part_scan, "train": part_train}[part](args, report, deadline)
    report.data["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    report.data["total_s"] = round(time.monotonic() - start, 1)
    report.save()
    say(f"done in {report.data['total_s']} s")
    print(markdown(report.data), flush=True)


if __name__ == "__main__":
    main()

"""What the plugin adds to QGIS's start: ``classFactory`` + ``initGui``, timed in fresh processes with
QGIS's API offscreen (the application and Processing started first, untimed, as QGIS does before it
loads plugins), and whether torch or transformers were imported on the way (they must load only when a
run starts). Two starts: with the dock closed when QGIS last closed, and with it open (then initGui
opens it again).

    .venv/bin/python bench/bench_plugin_start.py [--runs 5] [--json bench/results/plugin_start.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time
sys.path.insert(0, {tests!r})
from qgis_support import StandInInterface, qgis_app

qgis_app()
from qgis.core import QgsSettings

QgsSettings().setValue("geoclip_qgis/dock/dock_open", {dock_open!r})  # as QGIS last left it
iface = StandInInterface()
before = set(sys.modules)
start = time.perf_counter()
import geoclip_qgis

plugin = geoclip_qgis.classFactory(iface)
factory = time.perf_counter()
plugin.initGui()
done = time.perf_counter()
new = set(sys.modules) - before
heavy = sorted(m for m in ("torch", "transformers", "numpy", "PIL", "safetensors") if m in new)
print(json.dumps({{"class_factory_ms": (factory - start) * 1000, "init_gui_ms": (done - factory) * 1000,
                  "total_ms": (done - start) * 1000, "heavy_imports": heavy, "modules_imported": len(new)}}))
plugin.unload()
QgsSettings().setValue("geoclip_qgis/dock/dock_open", False)
"""


def one_run(dock_open: bool) -> dict:
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    code = CHILD.format(tests=str(ROOT / "tests"), dock_open=dock_open)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    if out.returncode != 0:
        raise SystemExit(f"the plugin did not start:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    figures = {}
    for dock_open in (False, True):
        runs = [one_run(dock_open) for _ in range(args.runs)]
        for run in runs:
            print(
                f"dock {'open' if dock_open else 'closed'}: classFactory {run['class_factory_ms']:.1f} ms + "
                f"initGui {run['init_gui_ms']:.1f} ms = {run['total_ms']:.1f} ms; "
                f"heavy imports: {', '.join(run['heavy_imports']) or 'none'}",
                file=sys.stderr,
            )
        totals = [r["total_ms"] for r in runs]
        heavy = sorted({m for r in runs for m in r["heavy_imports"]})
        figures["dock_open" if dock_open else "dock_closed"] = {
            "runs": runs,
            "total_ms_median": statistics.median(totals),
            "total_ms_min": min(totals),
            "total_ms_max": max(totals),
            "heavy_imports": heavy,
        }
    print()
    for name, f in figures.items():
        torch_loaded = "yes" if "torch" in f["heavy_imports"] else "no"
        print(
            f"plugin start, {name.replace('_', ' ')} last time (classFactory + initGui): "
            f"{f['total_ms_median']:.0f} ms median of {len(f['runs'])} ({f['total_ms_min']:.0f} - "
            f"{f['total_ms_max']:.0f}), target <= 100 ms; torch imported: {torch_loaded}"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()

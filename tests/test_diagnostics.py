"""Diagnostics (Models… → Diagnostics…) and the install dialog's explained failures: the report names
what this QGIS really imports, survives a broken library, keeps the last errors once each and is copied
verbatim; pip's failures are matched to their causes from pip's own words."""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import re
import sys
from pathlib import Path

import pytest
from qgis_support import qgis_app, wait_for

from geoclip_qgis.install import install_failures

COMMAND = (
    "$ /usr/bin/python3 -m pip install --target /home/ana/.local/share/QGIS/QGIS3/profiles/default/geoclip_qgis/"
    "python.x1 --upgrade --disable-pip-version-check --no-warn-script-location --progress-bar off torch>=2.2 "
    "numpy==1.24.2 --index-url https://download.pytorch.org/whl/cpu --extra-index-url https://pypi.org/simple"
)

# What pip (or importing what it installed) really prints, per cause.
PIP_FAILURES = {
    "offline": [
        "WARNING: Retrying (Retry(total=4, connect=None, read=None, redirect=None, status=None)) after connection "
        "broken by 'NewConnectionError('<pip._vendor.urllib3.connection.HTTPSConnection object at 0x7f3a2b1c4d90>: "
        "Failed to establish a new connection: [Errno -3] Temporary failure in name resolution')': /simple/torch/\n"
        "ERROR: Could not find a version that satisfies the requirement torch>=2.2 (from versions: none)\n"
        "ERROR: No matching distribution found for torch>=2.2",
        "WARNING: Retrying (Retry(total=0, connect=None, read=None, redirect=None, status=None)) after connection "
        "broken by 'NewConnectionError('<pip._vendor.urllib3.connection.HTTPSConnection object at 0x000001>: "
        "Failed to establish a new connection: [Errno 11001] getaddrinfo failed')': /simple/transformers/",
    ],
    "proxy": [
        "WARNING: Retrying (Retry(total=4, connect=None, read=None, redirect=None, status=None)) after connection "
        "broken by 'ProxyError('Cannot connect to proxy.', OSError('Tunnel connection failed: 407 Proxy "
        "Authentication Required'))': /simple/torch/\n"
        "ERROR: Could not find a version that satisfies the requirement torch>=2.2 (from versions: none)",
        "pip._vendor.requests.exceptions.ProxyError: HTTPSConnectionPool(host='pypi.org', port=443): Max retries "
        "exceeded with url: /simple/torch/ (Caused by ProxyError('Cannot connect to proxy.', "
        "NewConnectionError('Failed to establish a new connection: [Errno 111] Connection refused')))",
    ],
    "disk_full": [
        "Installing collected packages: torch\n"
        "ERROR: Could not install packages due to an OSError: [Errno 28] No space left on device",
        "ERROR: Could not install packages due to an OSError: [WinError 112] There is not enough space on the disk",
    ],
    "numpy_conflict": [
        "Collecting numpy==1.24.2\n"
        "ERROR: Cannot install numpy==1.24.2 and scipy==1.16.0 because these package versions have conflicting "
        "dependencies.\n\nThe conflict is caused by:\n    The user requested numpy==1.24.2\n"
        "    scipy 1.16.0 depends on numpy<2.6 and >=1.25.2\n\n"
        "ERROR: ResolutionImpossible: for help visit "
        "https://pip.pypa.io/en/latest/topics/dependency-resolution/#dealing-with-dependency-conflicts",
        "A module that was compiled using NumPy 1.x cannot be run in\nNumPy 2.1.3 as it may crash. To support both "
        "1.x and 2.x\nversions of NumPy, modules must be compiled with NumPy 2.0.",
        "ValueError: numpy.dtype size changed, may indicate binary incompatibility. Expected 96 from C header, "
        "got 88 from PyObject",
        "NumPy 2.1.3 would shadow QGIS's NumPy 1.24.2; GDAL's bindings need NumPy 1.x",
    ],
    "windows_dll": [
        'OSError: [WinError 126] The specified module could not be found. Error loading "C:\\Users\\ana\\AppData'
        '\\Roaming\\QGIS\\QGIS3\\profiles\\default\\geoclip_qgis\\python\\torch\\lib\\c10.dll" or one of its '
        "dependencies.",
        "ImportError: DLL load failed while importing _C: The specified module could not be found.",
        "OSError: [WinError 1114] A dynamic link library (DLL) initialization routine failed. Error loading "
        '"C:\\OSGeo4W\\apps\\Python312\\Lib\\site-packages\\torch\\lib\\c10.dll" or one of its dependencies.',
    ],
    "glibc_too_old": [
        "OSError: /lib/x86_64-linux-gnu/libc.so.6: version `GLIBC_2.28' not found (required by /home/ana/.local/"
        "share/QGIS/QGIS3/profiles/default/geoclip_qgis/python/torch/lib/libtorch_cpu.so)",
    ],
    "wrong_python": [
        "Looking in links: /media/usb/wheelhouse\n"
        "ERROR: torch-2.5.1+cpu-cp312-cp312-win_amd64.whl is not a supported wheel on this platform.",
        "ERROR: Package 'transformers' requires a different Python: 3.8.10 not in '>=3.9.0'",
        "Looking in links: /media/usb/wheelhouse\n"
        "ERROR: Ignored the following versions that require a different python version: 4.57.0 Requires-Python "
        ">=3.9.0\nERROR: Could not find a version that satisfies the requirement transformers<6,>=4.56 (from "
        "versions: none)\nERROR: No matching distribution found for transformers<6,>=4.56",
    ],
    "permission": [
        "ERROR: Could not install packages due to an OSError: [Errno 13] Permission denied: "
        "'/usr/share/qgis/python/plugins/geoclip_qgis/python/torch'\nConsider using the `--user` option or check "
        "the permissions.",
        "ERROR: Could not install packages due to an OSError: [WinError 5] Access is denied: 'C:\\Users\\ana\\"
        "AppData\\Roaming\\QGIS\\QGIS3\\profiles\\default\\geoclip_qgis\\python\\torch\\lib\\c10.dll'",
    ],
    "no_match": [
        "Looking in links: /media/usb/wheelhouse\n"
        "ERROR: Could not find a version that satisfies the requirement safetensors>=0.4 (from versions: none)\n"
        "ERROR: No matching distribution found for safetensors>=0.4",
    ],
}


@pytest.mark.parametrize(
    "code, output", [(code, output) for code, outputs in PIP_FAILURES.items() for output in outputs]
)
def test_each_known_pip_failure_is_explained_with_its_fix(code, output):
    logged = f"{COMMAND}\n{output}\n"  # as the install dialog's log holds it: the command first
    cause = install_failures.match(logged)
    assert cause is not None and cause.code == code
    words = install_failures.explain(logged)
    assert words == f"{cause.title}\n{cause.fix}" and len(cause.fix) > 40


def test_the_echoed_command_naming_numpy_is_not_a_numpy_conflict():
    """Every pip command names numpy (pinned to QGIS's) and "Collecting numpy" precedes any conflict: only
    a conflict pip says is about numpy counts as one."""
    other_conflict = (
        f"{COMMAND}\nCollecting numpy==1.24.2\nERROR: Cannot install huggingface-hub==0.20.0 and "
        "transformers==4.57.0 because these package versions have conflicting dependencies.\n\nThe conflict is "
        "caused by:\n    The user requested huggingface-hub==0.20.0\n    transformers 4.57.0 depends on "
        "huggingface-hub<1.0 and >=0.34.0\nERROR: ResolutionImpossible: for help visit https://pip.pypa.io/"
    )
    assert install_failures.match(other_conflict) is None
    assert "Cannot install huggingface-hub==0.20.0 and transformers==4.57.0" in install_failures.explain(other_conflict)
    # pip's routine note on skipped releases is no failure of its own
    routine = "INFO: Ignored the following versions that require a different python version: 1.21.2 Requires-Python"
    assert install_failures.match(f"{routine}\nERROR: Could not build wheels for tokenizers") is None


def test_an_unknown_failure_falls_back_to_pips_own_words():
    assert install_failures.match("pip crashed: KeyError 'dist-info'") is None
    assert install_failures.explain("pip crashed: KeyError 'dist-info'") == "pip crashed: KeyError 'dist-info'"
    rust = (
        f"{COMMAND}\nCollecting tokenizers\n  error: subprocess-exited-with-error\n\n  × Building wheel for "
        "tokenizers (pyproject.toml) did not run successfully.\n  │ exit code: 1\n  error: can't find Rust "
        "compiler\nERROR: Failed building wheel for tokenizers"
    )
    words = install_failures.explain(rust)
    assert "error: can't find Rust compiler" in words and "ERROR: Failed building wheel for tokenizers" in words
    assert COMMAND not in words


@pytest.mark.qgis
def test_the_install_dialog_explains_a_failure_above_the_raw_output():
    qgis_app()
    from geoclip_qgis.install.install_dialog import InstallDialog, InstallTask

    dialog = InstallDialog()
    assert not dialog.failure.isVisibleTo(dialog)
    for line in (COMMAND, *PIP_FAILURES["offline"][0].splitlines()):
        dialog.log.appendPlainText(line)
    dialog.task = InstallTask("cpu", None)
    dialog.task.error = "pip failed (exit 1); see the log"
    dialog._failed()
    assert dialog.failure.isVisibleTo(dialog)
    shown = dialog.failure.text()
    assert "could not reach the Python package index" in shown and "From a folder of wheels" in shown
    log = dialog.log.toPlainText()
    assert "Temporary failure in name resolution" in log and "No matching distribution found for torch" in log
    assert log.endswith("Not installed: pip failed (exit 1); see the log. Nothing was changed.")
    dialog.show()
    assert dialog.width() <= 1366 and dialog.height() <= 700
    # a cancelled install needs no explanation
    dialog.failure.setVisible(False)
    dialog.task.error = "cancelled"
    dialog._failed()
    assert not dialog.failure.isVisibleTo(dialog)
    dialog.close()


# ------------------------------------------------------------------------------------------ diagnostics


def _expected_version(module, distribution):
    return str(getattr(module, "__version__", None) or importlib.metadata.version(distribution))


@pytest.mark.qgis
def test_the_report_names_each_library_with_its_version_and_file_and_the_weights_found(tiny_clip, monkeypatch):
    qgis_app()
    import torch
    from qgis.core import Qgis

    from geoclip_qgis.backend.store.cache import cache_dir
    from geoclip_qgis.backend.store.weights import models_dir
    from geoclip_qgis.core import deps
    from geoclip_qgis.core.session import EngineSettings
    from geoclip_qgis.ui import diagnostics

    monkeypatch.setattr(diagnostics, "RECENT", diagnostics.RecentErrors())  # no errors from other tests
    text = diagnostics.report(EngineSettings(clip=str(tiny_clip)))
    for name, distribution, label in diagnostics.LIBRARIES:
        module = importlib.import_module(name)
        assert f"\n- {label} {_expected_version(module, distribution)}: {module.__file__}\n" in text
    assert f"- QGIS: {Qgis.QGIS_VERSION}\n" in text
    assert re.search(r"\n- Qt: Qt [56]\.\d+\.\d+ \(built with [56]\.\d+\.\d+\), PyQt [56]\.\d+", text)
    assert f"- Python: {sys.version.split()[0]} (" in text and f"- Python executable: {sys.executable}\n" in text
    assert f"- Plugin folder: {Path(diagnostics.__file__).resolve().parent.parent}\n" in text
    if torch.cuda.is_available():
        assert f"cuda:0: {torch.cuda.get_device_name(0)}, " in text
    else:
        assert "### CUDA devices\n- none (" in text
    assert f"- CLIP backbone: found in the CLIP folder chosen in Models…: {tiny_clip} (a CLIP vision" in text
    assert "- GeoCLIP heads: found in the installed geoclip package: " in text
    assert "- Answer photos: ready\n" in text and "- Problem: The CLIP checkpoint in use is not ViT-L/14" in text
    assert f"- Cache folder: {cache_dir()}\n    image-embeddings.sqlite: " in text
    assert f"- Packages installed by the plugin: {deps.plugin_python_dir()}" in text
    assert f"- Models folder: {models_dir()}\n" in text
    assert text.endswith("\n\n### Last errors (oldest first)\n- none since the plugin was loaded\n")


@pytest.mark.qgis
def test_a_library_that_will_not_import_is_named_and_the_report_goes_on(tmp_path, monkeypatch, tiny_clip):
    """A safetensors that is installed but whose import raises (a DLL that will not load) and weights
    that cannot be checked: each shows where it is, the rest of the report is still written."""
    qgis_app()
    from geoclip_qgis.core import session
    from geoclip_qgis.core.session import EngineSettings
    from geoclip_qgis.ui import diagnostics

    broken = tmp_path / "safetensors"
    broken.mkdir()
    (broken / "__init__.py").write_text(
        "raise OSError('[WinError 126] The specified module could not be found. Error loading "
        '"C:\\\\torch\\\\lib\\\\c10.dll" or one of its dependencies.\')\n'
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "safetensors", raising=False)
    importlib.invalidate_caches()
    text = diagnostics.report(EngineSettings(clip=str(tiny_clip)))
    assert (
        f"- safetensors {importlib.metadata.version('safetensors')}: not importable: OSError: [WinError 126] The "
        "specified module could not be found." in text
    )
    assert f"({broken / '__init__.py'})\n    likely cause: torch's libraries (DLLs) could not be loaded.\n" in text
    import numpy

    assert f"- NumPy {numpy.__version__}: {numpy.__file__}" in text  # the others are still there
    assert "### Last errors (oldest first)\n- " in text

    def no_state(settings=None):
        raise RuntimeError("the weights could not be read")

    monkeypatch.setattr(session, "current_state", no_state)
    text = diagnostics.report()
    assert "### Weights\n- (could not be gathered: RuntimeError: the weights could not be read)\n\n" in text
    assert "### Folders and caches\n- Cache folder: " in text


@pytest.mark.qgis
def test_the_last_errors_are_kept_once_each_and_bounded(monkeypatch):
    qgis_app()
    from qgis.core import Qgis, QgsApplication, QgsMessageLog

    from geoclip_qgis.plugin import _MessageLogHandler
    from geoclip_qgis.ui import diagnostics

    monkeypatch.setattr(diagnostics, "RECENT", diagnostics.RecentErrors(size=20))
    logger = logging.getLogger("geoclip_qgis")
    forward = _MessageLogHandler()  # as the plugin forwards its logger to the message log
    logger.addHandler(forward)
    recent = diagnostics.watch()
    try:
        logging.getLogger("geoclip_qgis.backend.store.cache").warning("cannot remember checksums in /ro (read-only)")
        logger.info("not an error")
        QgsMessageLog.logMessage("run failed: the CLIP folder is gone", "GeoCLIP", Qgis.MessageLevel.Critical)
        QgsMessageLog.logMessage("another plugin's trouble", "Python", Qgis.MessageLevel.Critical)
        for _ in range(20):
            QgsApplication.processEvents()
        wait_for(lambda: len(recent.entries) >= 2, 10)
        lines = recent.lines()
        assert [line.split(" ", 2)[2] for line in lines] == [
            "WARNING: cannot remember checksums in /ro (read-only)",
            "CRITICAL: run failed: the CLIP folder is gone",
        ]
        text = diagnostics.report()
        assert text.count("cannot remember checksums in /ro") == 1 and "not an error" not in text
        try:
            raise ValueError("bad tile")
        except ValueError:
            logger.exception("failure %d", 0)
        QgsApplication.processEvents()
        assert "ERROR: failure 0\n    Traceback (most recent call last):\n" in diagnostics.report()
        assert "\n    ValueError: bad tile\n" in diagnostics.report()
        for number in range(1, 25):
            logger.error("failure %d", number)
        for _ in range(20):
            QgsApplication.processEvents()
        lines = recent.lines()
        assert len(lines) == 20 and lines[-1].endswith(" ERROR: failure 24")  # the logger's level, not the log's
        assert lines[0].endswith(" ERROR: failure 5")
        assert "failure 0" not in diagnostics.report()
        assert not any("run failed" in line for line in recent.lines())
    finally:
        diagnostics.unwatch()
        logger.removeHandler(forward)
    assert recent not in logger.handlers


@pytest.mark.qgis
def test_diagnostics_from_the_models_dialog_copies_the_exact_report(monkeypatch):
    qgis_app()
    from qgis.PyQt.QtWidgets import QApplication

    from geoclip_qgis.ui.models_dialog import DiagnosticsDialog, ModelsDialog

    opened = []
    monkeypatch.setattr(DiagnosticsDialog, "exec", lambda self: opened.append(self) or 0)
    models = ModelsDialog()
    try:
        assert models.diagnostics_button.text() == "Diagnostics…"
        models.diagnostics_button.click()
        dialog = opened[0]
        assert dialog.text.startswith("## GeoCLIP for QGIS diagnostics") and "### Libraries" in dialog.text
        assert dialog.view.isReadOnly() and dialog.view.toPlainText() == dialog.text
        QApplication.clipboard().setText("something else")
        dialog.copy_button.click()
        assert QApplication.clipboard().text() == dialog.text
        for window in (models, dialog):  # a 1366x768 screen, less QGIS's title bar and a taskbar
            window.show()
            QApplication.processEvents()
            assert window.width() <= 1366 and window.height() <= 700
            window.close()
    finally:
        wait_for(lambda: models.checksums_done, 120)

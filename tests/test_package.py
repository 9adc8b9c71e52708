"""The plugin ZIP passes what the QGIS plugin repository checks, including its scanners."""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

from package_plugin import build, check, scan, version  # noqa: E402


@pytest.mark.slow  # over 2 s: left out of make test-fast
def test_zip_layout_metadata_and_scanners(tmp_path):
    package = build(tmp_path)
    assert package.name == f"geoclip_qgis-{version()}.zip"
    names = zipfile.ZipFile(package).namelist()
    assert "geoclip_qgis/backend/model/engine.py" in names and "geoclip_qgis/metadata.txt" in names
    assert "geoclip_qgis/LICENSE" in names and "geoclip_qgis/resources/icon.svg" in names
    assert not any(n.startswith("geoclip_qgis/tests") or "__pycache__" in n or n.endswith(".pyc") for n in names)
    assert check(package) == []
    assert scan(package) == []


@pytest.mark.slow  # over 2 s: left out of make test-fast
def test_checks_catch_what_the_repository_refuses(tmp_path):
    good = build(tmp_path)
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(good) as source, zipfile.ZipFile(bad, "w") as target:
        for item in source.infolist():
            data = source.read(item)
            if item.filename.endswith("metadata.txt"):
                data = b"\n".join(line for line in data.splitlines() if not line.startswith(b"tracker="))
            if not item.filename.endswith("LICENSE"):
                target.writestr(item, data)
        target.writestr("geoclip_qgis/.hidden", "x")
        target.writestr("geoclip_qgis/x.pyc", "x")
        target.writestr(
            "geoclip_qgis/unsafe.py",
            "import pickle\n\ndef load(b):\n    return pickle.loads(b)\n"
            "password = 'hunter2hunter2'\nAWS_KEY = 'AKIAIOSFODNN7EXAMPLE'\n",
        )
    problems = check(bad) + scan(bad)
    text = "\n".join(problems)
    for expected in (
        "metadata.txt lacks tracker",
        "no LICENSE file",
        "hidden or cache file",
        "compiled file",
        "bandit B301",
        "detect-secrets",
    ):
        assert expected in text, expected

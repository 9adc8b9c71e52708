"""The dependency installer's pip commands: QGIS's NumPy and what is built against it stay as QGIS has
them (a constraints file read from QGIS's own Python), and a failed install leaves nothing behind."""

from __future__ import annotations

import subprocess
import sys
import venv

import pytest

from geoclip_qgis.install import installer


@pytest.fixture(scope="module")
def fake_qgis_python(tmp_path_factory):
    """A Python whose packages are known: NumPy 1.26.4 (as Debian ships it), a package built against
    it, one that is not, one with a Debian local version and one with a version pip cannot read."""
    root = tmp_path_factory.mktemp("qgis-python")
    venv.create(root, with_pip=False)
    site = next(root.glob("lib/python*/site-packages"))
    for name, version, requires in (
        ("numpy", "1.26.4", []),
        ("scipy", "1.11.4", ["numpy<1.28.0,>=1.21.6"]),
        ("matplotlib", "3.6.3+dfsg", ["numpy>=1.19", "pillow>=6.2.0"]),
        ("requests", "2.31.0", ["idna<4,>=2.5", 'numpy ; extra == "fast"']),
        ("odd-package", "1.0-debian-7", ["numpy"]),
    ):
        info = site / f"{name.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
        lines += [f"Requires-Dist: {r}" for r in requires]
        (info / "METADATA").write_text("\n".join(lines) + "\n")
    return str(root / "bin" / "python")


def test_constraints_hold_numpy_and_what_needs_it(fake_qgis_python):
    packages = installer.qgis_packages(fake_qgis_python)
    assert installer.qgis_constraints(packages) == ["matplotlib==3.6.3", "numpy==1.26.4", "scipy==1.11.4"]
    assert installer.usable_torch(packages) is None  # none there: the install brings one


def test_a_python_that_does_not_run_has_no_packages(tmp_path):
    assert installer.qgis_packages(str(tmp_path / "no-python")) == []


def test_a_torch_qgis_already_has_is_kept(tmp_path):
    """A distribution's own torch (Debian's python3-torch) is not installed over; an old one is."""
    assert installer.usable_torch([("torch", "2.6.0+debian", True)]) == "2.6.0+debian"
    assert installer.usable_torch([("torch", "1.13.1", True)]) is None
    steps = installer.pip_steps(tmp_path, wheels=str(tmp_path), python="python3", with_torch=False)
    assert len(steps) == 1 and not any(a.startswith("torch") for a in steps[0])
    assert any(a.startswith("transformers") for a in steps[0])


def test_both_pip_steps_obey_the_constraints(tmp_path, fake_qgis_python):
    lines = installer.qgis_constraints(installer.qgis_packages(fake_qgis_python))
    constraints = installer.write_constraints(tmp_path / "c.txt", lines)
    assert constraints.read_text().splitlines() == ["matplotlib==3.6.3", "numpy==1.26.4", "scipy==1.11.4"]
    steps = installer.pip_steps(tmp_path / "t", wheels=str(tmp_path), python=fake_qgis_python, constraints=constraints)
    assert len(steps) == 2
    for command in steps:
        assert command[command.index("--constraint") + 1] == str(constraints)
        assert command[0] == fake_qgis_python and command[command.index("--target") + 1] == str(tmp_path / "t")


def test_pip_refuses_a_numpy_other_than_qgis(tmp_path, fake_qgis_python):
    """The constraints file really binds pip: asking for another NumPy fails before anything lands."""
    lines = installer.qgis_constraints(installer.qgis_packages(fake_qgis_python))
    constraints = installer.write_constraints(tmp_path / "c.txt", lines)
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--no-index",
            "--find-links",
            str(wheels),
            "--target",
            str(tmp_path / "t"),
            "--constraint",
            str(constraints),
            "numpy==2.0.0",
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode != 0
    assert "numpy==2.0.0" in out.stdout + out.stderr and "numpy==1.26.4" in out.stdout + out.stderr
    assert not (tmp_path / "t").exists()


def test_a_failed_install_leaves_neither_packages_nor_constraints(tmp_path, fake_qgis_python):
    target = tmp_path / "python"
    (target / "kept").mkdir(parents=True)  # what an earlier install put there
    lines = []
    with pytest.raises(installer.InstallError):
        installer.install(target, wheels=str(tmp_path / "no-wheels"), log=lines.append, python=fake_qgis_python)
    assert any("--constraint" in line for line in lines)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["python"] and (target / "kept").is_dir()


def _installed(folder, name, version, files):
    """What pip --target leaves: the package's files and a dist-info whose RECORD lists them."""
    info = folder / f"{name}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    for file in files:
        path = folder / file
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    record = [*files, f"{info.name}/METADATA", f"{info.name}/RECORD"]
    (info / "RECORD").write_text("".join(f"{f},,\n" for f in record))


def test_copies_of_qgis_packages_are_removed_from_the_plugin_folder(tmp_path):
    """pip --target adds NumPy as a dependency; at QGIS's version it would only shadow QGIS's own."""
    folder = tmp_path / "python"
    _installed(
        folder, "numpy", "2.2.4", ["numpy/__init__.py", "numpy/core/_multiarray.so", "numpy.libs/libgfortran.so"]
    )
    _installed(folder, "scipy", "1.16.0", ["scipy/__init__.py"])  # not QGIS's version: kept (pip would refuse it)
    _installed(folder, "transformers", "5.24.0", ["transformers/__init__.py"])
    outside = tmp_path / "outside.txt"
    outside.write_text("not ours")
    (folder / "numpy-2.2.4.dist-info" / "RECORD").write_text(
        (folder / "numpy-2.2.4.dist-info" / "RECORD").read_text() + "../outside.txt,,\n"
    )
    said = []
    installer.drop_what_qgis_has(folder, ["numpy==2.2.4", "scipy==1.15.3"], said.append)
    assert sorted(p.name for p in folder.iterdir()) == [
        "scipy",
        "scipy-1.16.0.dist-info",
        "transformers",
        "transformers-5.24.0.dist-info",
    ]
    assert outside.read_text() == "not ours"  # a RECORD never reaches outside the folder
    assert said == ["numpy 2.2.4: QGIS's own is used (the copy pip added is removed)"]


def _wheel(folder, name, version, requires=()):
    """A minimal wheel pip can resolve offline (what matters here is its metadata)."""
    import zipfile

    folder.mkdir(parents=True, exist_ok=True)
    info = f"{name}-{version}.dist-info"
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(
        f"Requires-Dist: {r}\n" for r in requires
    )
    wheel = "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{name}/__init__.py", "")
        archive.writestr(f"{info}/METADATA", metadata)
        archive.writestr(f"{info}/WHEEL", wheel)
        archive.writestr(
            f"{info}/RECORD", f"{name}/__init__.py,,\n{info}/METADATA,,\n{info}/WHEEL,,\n{info}/RECORD,,\n"
        )
    return path


def test_a_cpu_build_that_would_bring_cuda_stops_before_downloading(tmp_path):
    """The CPU index cannot be reached and what pip would take is a CUDA build: the install stops and
    says why, instead of fetching gigabytes of NVIDIA libraries."""
    cuda = tmp_path / "cuda"
    # Versions no other wheel folder on this machine holds, pinned, so pip resolves exactly these files.
    _wheel(cuda, "torch", "2.2.1", ["nvidia-cublas-cu12==12.8.4.1 ; platform_system == 'Linux'", "filelock"])
    step = installer.pip_steps(tmp_path / "t", wheels=str(cuda), python=sys.executable, torch="torch==2.2.1")[0]
    assert installer.resolved_torch(step)["cuda"]
    with pytest.raises(installer.InstallError, match="CUDA build .* Nothing was downloaded"):
        installer.check_torch_build(step, log=lambda line: None)
    assert not (tmp_path / "t").exists()

    cpu = tmp_path / "cpu"
    _wheel(cpu, "torch", "2.2.1+cpu", ["filelock"])
    step = installer.pip_steps(tmp_path / "t", wheels=str(cpu), python=sys.executable, torch="torch==2.2.1+cpu")[0]
    said = []
    installer.check_torch_build(step, log=said.append)  # a CPU build found elsewhere: it goes on
    assert said == ["PyTorch's CPU index cannot be reached; torch 2.2.1+cpu found elsewhere is a CPU build"]


def test_the_heads_step_is_pinned_by_hash_and_takes_no_dependencies(tmp_path):
    from geoclip_qgis.core.deps import HEADS_RELEASE

    requirements = tmp_path / "release.txt"
    requirements.write_text(installer.heads_requirement())
    assert requirements.read_text().startswith(f"{HEADS_RELEASE} --hash=sha256:")
    step = installer.heads_step(tmp_path / "t", requirements, wheels=str(tmp_path), python="python3")
    assert "--no-deps" in step and "--require-hashes" in step and step[step.index("-r") + 1] == str(requirements)
    # A wheel with the right name and version but other bytes is refused by pip.
    _wheel(tmp_path / "w", "geoclip", HEADS_RELEASE.split("==")[1])
    out = subprocess.run(
        installer.heads_step(tmp_path / "t", requirements, wheels=str(tmp_path / "w"), python=sys.executable),
        capture_output=True,
        text=True,
    )
    assert out.returncode != 0 and "hash" in (out.stdout + out.stderr).lower()
    assert not (tmp_path / "t" / "geoclip").exists()


def test_a_cuda_torch_where_cpu_was_chosen_is_not_put_in_place(tmp_path):
    folder = tmp_path / "staged"
    _installed(folder, "torch", "2.13.0", ["torch/__init__.py"])
    _installed(folder, "nvidia-cublas-cu12", "12.8.4.1", ["nvidia/cublas/__init__.py"])
    _installed(folder, "transformers", "5.24.0", ["transformers/__init__.py"])
    problems = installer.conflicts(folder, build="cpu")
    assert any("CPU build was chosen" in p for p in problems)
    assert any("GeoCLIP release" in p for p in problems)  # and the heads are not there
    assert not any("CPU build" in p for p in installer.conflicts(folder, build="cuda"))

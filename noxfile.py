"""Release checks that need an environment of their own (``pip install -e ".[dev]"`` brings nox).

* ``nox -s floor``: a Python 3.10 virtual environment with the oldest supported releases
  (``constraints/floor.txt``: torch, torchvision, Lightning, torchmetrics and the test extras), the project
  installed with ``.[dev]``, and the test suite but the documentation and type checks (``FLOOR_SKIPS``).
  Arguments after ``--`` go to pytest instead (``nox -s floor -- tests/early_stopping``).
* ``nox -s wheel``: build the wheel and the sdist, ``twine check`` them, check what the sdist holds, install
  the wheel into a fresh virtual environment (which reuses the installed torch and Lightning through the
  system site-packages) and, from a directory outside the repository, run the README quickstart and a
  fit with callbacks against the installed wheel.

The supported versions and why each floor is what it is: ``docs/versions.md``.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import zipfile
from pathlib import Path

import nox

ROOT = Path(__file__).resolve().parent
FLOOR_PYTHON = "3.10"
nox.options.default_venv_backend = "venv"
nox.options.sessions = ["floor", "wheel"]


def _python(version: str) -> str:
    """Find ``version``: ``NOX_PYTHON_<MAJOR><MINOR>``, a working ``pythonX.Y``, or pyenv's install."""
    explicit = os.environ.get(f"NOX_PYTHON_{version.replace('.', '')}")
    if explicit:
        return explicit
    found = shutil.which(f"python{version}")
    # a pyenv shim exists for every installed version but fails unless that version is active
    if found and subprocess.run([found, "--version"], capture_output=True).returncode == 0:
        return found
    pyenv_root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    installed = sorted(glob.glob(os.path.join(pyenv_root, "versions", f"{version}.*", "bin", "python")))
    return installed[-1] if installed else version  # nox says clearly when it finds none


#: What the floor run leaves to the newest-versions run: checks of the documentation and of the types, not
#: of the library's behaviour. The site build needs the docs tools the newest run installs (older
#: pymdown-extensions fail on mkdocs-material's highlight options), the docs' examples show the output of
#: the newest Lightning (its messages differ on 2.4), and mypy checks against the newest torch's stubs.
FLOOR_SKIPS = (
    "--ignore=tests/test_docs_site.py",
    "--ignore=tests/test_docs_examples.py",
    "--ignore=tests/typing",
)


@nox.session(python=_python(FLOOR_PYTHON))
def floor(session: nox.Session) -> None:
    """Run the suite on Python 3.10 with every dependency at its floor (``FLOOR_SKIPS`` aside)."""
    session.install("-c", "constraints/floor.txt", "-e", ".[dev]")
    session.run("python", "-m", "pip", "check")
    session.run(
        "python",
        "-c",
        "import torch, lightning, torchmetrics, torchvision, sys; print('floor:', sys.version.split()[0],"
        " 'torch', torch.__version__, 'lightning', lightning.__version__, 'torchmetrics',"
        " torchmetrics.__version__, 'torchvision', torchvision.__version__)",
    )
    session.run("python", "-m", "pytest", *(session.posargs or FLOOR_SKIPS), env={"PYTHONPATH": str(ROOT)})


def _project_version() -> str:
    """Read the version from its one place, ``[project] version`` in pyproject.toml."""
    found = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(encoding="utf-8"), re.M)
    assert found is not None, "pyproject.toml has no version line"
    return found.group(1)


def _check_sdist(sdist: Path, version: str) -> None:
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
        pkg_info = tar.extractfile(f"{sdist.name[: -len('.tar.gz')]}/PKG-INFO")
        assert pkg_info is not None
        meta = pkg_info.read().decode()
    wanted = {"pyproject.toml", "README.md", "lightning_reg/__init__.py", "lightning_reg/__init__.pyi",
              "lightning_reg/py.typed"}
    missing = wanted - names
    assert not missing, f"sdist {sdist.name} lacks {sorted(missing)}"
    modules = {n for n in names if n.startswith("lightning_reg/") and n.endswith(".py")}
    in_tree = {p.relative_to(ROOT).as_posix() for p in (ROOT / "lightning_reg").rglob("*.py")}
    assert modules == in_tree, f"sdist modules differ from the tree: {sorted(modules ^ in_tree)}"
    assert re.search(rf"^Version: {re.escape(version)}$", meta, re.M), "sdist PKG-INFO has another version"
    allowed = {"PKG-INFO", "README.md", "pyproject.toml", "setup.cfg", "MANIFEST.in"}
    package = ("lightning_reg/", "lightning_reg.egg-info/", "lightning_reg")  # also the directory entries
    stray = sorted(n for n in names if not n.startswith(package) and n not in allowed)
    assert not stray, f"sdist {sdist.name} holds files outside the package: {stray}"


def _check_wheel(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    assert "lightning_reg/py.typed" in names, "wheel lacks lightning_reg/py.typed"
    # lazy_loader reads the public names from the stubs at run time: a wheel without them cannot import
    stubs = {p.relative_to(ROOT).as_posix() for p in (ROOT / "lightning_reg").rglob("*.pyi")}
    assert stubs and stubs <= names, f"wheel lacks {sorted(stubs - names)}"
    stray = sorted(n for n in names if n.split("/")[0] not in ("lightning_reg",) and ".dist-info/" not in n)
    assert not stray, f"wheel ships files outside the package: {stray[:10]}"


_CALLBACK_FIT = '''
"""A fit with callbacks against the installed wheel (run from outside the repository)."""
import importlib.metadata, sys
import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
import lightning_reg
from lightning_reg import (DropPath, EarlyStopping, FreezeBatchNorm, GradientClipping, GradientMonitor,
                           RegularizedModule, ReproducibleResume, StochasticDepthScheduler)

expected_prefix, expected_version = sys.argv[1], sys.argv[2]
assert lightning_reg.__file__.startswith(expected_prefix), lightning_reg.__file__
assert lightning_reg.__version__ == importlib.metadata.version("lightning-reg") == expected_version

class Net(RegularizedModule):
    def __init__(self):
        super().__init__(lr=0.05, weight_decay=0.01)
        self.body = nn.Sequential(nn.Linear(4, 16), nn.BatchNorm1d(16), nn.ReLU())
        self.drop_path, self.head = DropPath(0.0), nn.Linear(16, 1)
    def forward(self, x):
        h = self.body(x)
        return self.head(h + self.drop_path(h))
    def training_step(self, batch, batch_idx):
        return nn.functional.mse_loss(self(batch[0]), batch[1] * (1 + self.current_epoch))
    def validation_step(self, batch, batch_idx):
        self.log("val_loss", nn.functional.mse_loss(self(batch[0]), batch[1]))

torch.manual_seed(0)
x = torch.randn(64, 4)
data = DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=16)
es = EarlyStopping("val_loss", patience=2)
trainer = L.Trainer(max_epochs=6, log_every_n_steps=1, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False,
                    callbacks=[es, GradientMonitor(), GradientClipping("autoclip"), FreezeBatchNorm(epoch=2),
                               StochasticDepthScheduler(max_rate=0.2, rule="uniform"),
                               ReproducibleResume()])
trainer.fit(Net(), data, data)
assert es.restored and es.best_epoch is not None, (es.restored, es.best_epoch)
assert "grad/norm_total" in trainer.callback_metrics
print("callback fit ok: best epoch", es.best_epoch, "restored")
'''


@nox.session(venv_params=["--system-site-packages"])
def wheel(session: nox.Session) -> None:
    """Build, check and install the wheel; run the README quickstart and a callback fit outside the tree."""
    version = _project_version()
    dist = Path(tempfile.mkdtemp(prefix="lightning-reg-dist-"))
    session.run("python", "-m", "build", "--outdir", str(dist), str(ROOT))
    wheels, sdists = sorted(dist.glob("*.whl")), sorted(dist.glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, sorted(p.name for p in dist.iterdir())
    assert wheels[0].name.startswith(f"lightning_reg-{version}-"), wheels[0].name
    session.run("python", "-m", "twine", "check", "--strict", *map(str, (*wheels, *sdists)))
    _check_sdist(sdists[0], version)
    _check_wheel(wheels[0])
    # the wheel goes into the fresh environment; its dependencies resolve against the system site-packages
    # (already installed there, so nothing is downloaded)
    session.install("--force-reinstall", "--no-deps", str(wheels[0]))
    session.install(str(wheels[0]))
    site = session.run(
        "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", silent=True
    )
    assert isinstance(site, str)
    outside = Path(tempfile.mkdtemp(prefix="lightning-reg-wheel-"))
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    quickstart = re.search(r"<!-- quickstart -->\n```python\n(.*?)```", readme, re.S)
    assert quickstart is not None, "README.md has no quickstart block"
    (outside / "quickstart.py").write_text(quickstart.group(1), encoding="utf-8")
    (outside / "callback_fit.py").write_text(_CALLBACK_FIT, encoding="utf-8")
    env = {"PYTHONPATH": "", "OMP_NUM_THREADS": "1"}  # nothing from the repository on the path
    with session.chdir(outside):
        out = session.run("python", "quickstart.py", env=env, silent=True)
        assert isinstance(out, str)
        print(out[-1500:])
        assert re.search(r"EarlyStopping: restored epoch \d+, step \d+, val_loss=", out), out[-3000:]
        session.run("python", "callback_fit.py", site.strip(), version, env=env)
    shutil.rmtree(outside, ignore_errors=True)
    shutil.rmtree(dist, ignore_errors=True)

"""Guard tests: the conventions of lightning_reg/_conventions.py hold for every package and every callback.

* every core module imports with Lightning blocked, and so does the flat API until a Lightning name is used;
* every module of a package is declared (core or Lightning) or private, and every module's ``__all__`` is
  exported flat; public classes and functions a module defines are in its ``__all__``;
* the test tree mirrors the package;
* every callback that logs step metrics logs them on Lightning's own rows for ``log_every_n_steps`` in
  (0, None, n), and every key it logs is monitorable (in ``trainer.callback_metrics``, usable by
  ``ModelCheckpoint(monitor=...)``);
* the shared validators, selector syntax and logging rule behave as documented.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning as L
import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, as a package
    import tomli as tomllib
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader

import lightning_reg
from lightning_reg._shared import step_logging, validation, verbosity
from lightning_reg._shared.names import NameSelector
from tests.helpers import classification_loader
from tests.memory_logger import MemoryLogger

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIR = ROOT / "lightning_reg"


def packages() -> list[str]:
    """The technique packages (and module/, presets/, report/): every public sub-package."""
    return sorted(p.name for p in PACKAGE_DIR.iterdir() if (p / "__init__.py").exists() and p.name[0] != "_")


def core_modules() -> list[str]:
    """The modules the import-linter contract "Core modules import no Lightning" covers, expanded."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (contract,) = [c for c in config["contracts"] if c["type"] == "forbidden"]
    out = []
    for name in contract["source_modules"]:
        path = ROOT / name.replace(".", "/")
        if path.is_dir():
            out += [f"{name}.{p.stem}" for p in sorted(path.glob("*.py")) if not p.stem.startswith("__")]
        else:
            out.append(name)
    return out


# ------------------------------------------------------------------------------------------ import guards
_BLOCK_LIGHTNING = """
import importlib.abc, json, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("lightning", "pytorch_lightning", "lightning_fabric", "torchmetrics"):
            raise ImportError(f"blocked: {name}")
        return None
sys.meta_path.insert(0, Block())
import lightning_reg
modules = json.loads(sys.argv[1])
for m in modules:
    importlib.import_module(m)
# a flat name from a core module resolves without Lightning too
assert callable(lightning_reg.weight_decay_param_groups) and callable(lightning_reg.grad_norms)
print("imported", len(modules))
"""


def test_core_modules_and_the_flat_api_import_without_lightning() -> None:
    # the same list import-linter checks statically; this imports them with Lightning blocked
    core = core_modules()
    assert len(core) >= 15
    proc = subprocess.run(
        [sys.executable, "-c", _BLOCK_LIGHTNING, json.dumps(core)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"imported {len(core)}" in proc.stdout


def _stub_names(path: Path) -> tuple[dict[str, str], list[str]]:
    """``{name: module}`` imported by an ``__init__.pyi`` and its ``__all__``."""
    tree = ast.parse(path.read_text())
    imported = {a.asname or a.name: node.module for node in tree.body if isinstance(node, ast.ImportFrom)
                for a in node.names}
    (listed,) = [ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
                 and getattr(n.targets[0], "id", "") == "__all__"]
    return imported, listed


def test_the_public_api_is_the_static_stub_and_dir_shows_only_it() -> None:
    flat, flat_all = _stub_names(PACKAGE_DIR / "__init__.pyi")
    assert sorted(flat_all) == sorted([*flat, "__version__"])
    assert sorted(lightning_reg.__all__) == sorted(flat_all) == sorted(dir(lightning_reg))
    for pkg in packages():
        package = importlib.import_module(f"lightning_reg.{pkg}")
        names, listed = _stub_names(PACKAGE_DIR / pkg / "__init__.pyi")
        assert sorted(names) == sorted(listed) == sorted(package.__all__) == sorted(dir(package)), pkg
        for name, module in names.items():
            defining = importlib.import_module(f"lightning_reg.{pkg}.{module}")
            assert name in defining.__all__, f"{pkg}: {name} is not in {module}.__all__"
            assert getattr(package, name) is getattr(defining, name)
    for name, pkg in flat.items():
        assert getattr(lightning_reg, name) is getattr(importlib.import_module(f"lightning_reg.{pkg}"), name)
    assert len(flat) <= 30, "the flat API is for what users call most; reach the rest through its package"


def test_every_public_definition_is_in_its_modules_all() -> None:
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        if path.stem.startswith("__"):
            continue
        module = importlib.import_module(".".join(path.relative_to(ROOT).with_suffix("").parts))
        names = set(getattr(module, "__all__", ()))
        # public classes/functions defined here are in __all__ (else: prefix them with _)
        defined = {
            n
            for n, obj in vars(module).items()
            if not n.startswith("_")
            and (inspect.isclass(obj) or inspect.isfunction(obj))
            and getattr(obj, "__module__", None) == module.__name__
        }
        assert defined <= names, f"{module.__name__}: public but not in __all__: {defined - names}"


def test_no_module_imports_an_underscore_name_from_another_module() -> None:
    offenders = []
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lightning_reg"):
                offenders += [f"{path.relative_to(ROOT)}: {node.module}.{a.name}" for a in node.names
                              if a.name.startswith("_") and not a.name.startswith("__")]
    assert not offenders, "make the name public in the module that owns it: " + ", ".join(offenders)


def test_test_tree_mirrors_the_package() -> None:
    for pkg in packages():
        tests = list((ROOT / "tests" / pkg).glob("test_*.py"))
        assert tests, f"tests/{pkg}/ has no test file"
        assert (ROOT / "tests" / pkg / "__init__.py").exists()
    stray = [p.name for p in (ROOT / "tests").glob("test_*.py") if p.stem[5:] in packages()]
    assert not stray, f"package tests outside their folder: {stray}"


# ------------------------------------------------------------------------------------------ shared rules
def test_validators_raise_type_error_for_types_and_value_error_for_values() -> None:
    with pytest.raises(TypeError, match=r"^`n` must be an int >= 1; got '3' of type str\.$"):
        validation.check_int("n", "3", low=1)
    with pytest.raises(TypeError, match=r"`n` must be an int"):
        validation.check_int("n", True)  # a bool is not an int here
    with pytest.raises(ValueError, match=r"^`n` must be an int >= 1; got 0\.$"):
        validation.check_int("n", 0, low=1)
    with pytest.raises(ValueError, match=r"^`p` must be a number in \[0, 1\); got nan\.$"):
        validation.check_rate("p", float("nan"))
    with pytest.raises(TypeError, match=r"not a tensor"):
        validation.check_number("lr", torch.tensor(0.1))
    with pytest.raises(ValueError, match=r"^`mode` must be one of 'min', 'max'; got 'up'\.$"):
        validation.check_choice("mode", "up", ("min", "max"))
    with pytest.raises(TypeError, match=r"write \['head'\]"):
        validation.check_str_list("exclude", "head")
    assert validation.check_number("t", float("inf"), low=0, finite=False) == float("inf")
    assert [verbosity.check_verbose(v) for v in (False, True, 0, 1, 2)] == [0, 2, 0, 1, 2]


def test_one_selector_syntax() -> None:
    names = ["stem.weight", "blocks.0.attn.qkv.weight", "blocks.0.norm1.bias", "blocks.1.attn.proj.bias"]
    cases = {
        "blocks.0": names[1:3],  # a dotted prefix
        "blocks.*.attn": [names[1], names[3]],  # a glob on any dotted prefix
        "*.bias": [names[2], names[3]],
        "re:norm\\d": [names[2]],  # a regex after re:
        "stem.weight": [names[0]],  # an exact name
        "blocks.0.att": [],  # a prefix only at a dot boundary
    }
    for pattern, expected in cases.items():
        assert [n for n in names if NameSelector([pattern]).matches(n)] == expected, pattern
    with pytest.raises(ValueError, match=r"looks like a regular expression; write 're:\^stem'"):
        NameSelector(["^stem"], name="exclude")
    with pytest.raises(ValueError, match=r"not a valid regex"):
        NameSelector(["re:("])


def test_is_logging_step_equals_lightnings_rule_at_every_batch() -> None:
    seen: list[tuple[int, bool, bool, bool]] = []

    class Probe(L.Callback):
        def on_train_batch_start(self, trainer: Any, *args: Any) -> None:
            seen.append(
                (
                    step_logging.logger_step(trainer),
                    step_logging.is_logging_step(trainer, None),
                    trainer._logger_connector.should_update_logs,
                    step_logging.is_logging_step(trainer, 0),
                )
            )

    trainer = L.Trainer(max_epochs=2, log_every_n_steps=3, logger=False, callbacks=[Probe()], **_QUIET)
    trainer.fit(_Module(), _loader(), _loader())
    assert len(seen) == 14
    assert [ours for _, ours, _, _ in seen] == [lightning for _, _, lightning, _ in seen]
    assert [s for s, ours, _, _ in seen if ours] == [2, 5, 8, 11]
    assert not any(off for *_, off in seen)


# ------------------------------------------------------------------------------------------ every callback
_QUIET = dict(
    accelerator="cpu",
    enable_progress_bar=False,
    enable_model_summary=False,
    enable_checkpointing=False,
    num_sanity_val_steps=0,
)


class _Module(lightning_reg.RegularizedModule):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(lr=0.05, **kwargs)
        self.stem = nn.Linear(4, 8)
        self.block = nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.1))
        self.drop_path = lightning_reg.DropPath(0.1)
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.stem(x))
        return self.head(h + self.drop_path(self.block(h)))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = nn.functional.cross_entropy(self(batch[0]), batch[1])
        self.log("reference", loss, on_step=True, on_epoch=False)  # Lightning's own step metric
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val_loss", nn.functional.cross_entropy(self(batch[0]), batch[1]))


def _loader() -> DataLoader:
    return classification_loader(28, 4, seed=0)


def _step_callbacks(n: int | None) -> list[Any]:
    """Every callback (and mixin feature) that logs step metrics, with ``log_every_n_steps=n`` if it can."""
    made = [
        lightning_reg.GradientMonitor(log_every_n_steps=n, verbose=0),
        lightning_reg.GradientClipping("norm", log_every_n_steps=n, verbose=0),
        lightning_reg.StochasticDepthScheduler(max_rate=0.2, log_every_n_steps=n),
        lightning_reg.ProximalL1(l1=1e-4),
    ]
    for cb in made:
        if "log_every_n_steps" in inspect.signature(type(cb)).parameters:
            cb.log_every_n_steps = n
    return made


_STEP_KEY_PREFIXES = ("grad/", "stochastic_depth/", "proximal_l1/", "penalty/")


@pytest.mark.parametrize("n", [0, None, 2], ids=["off", "trainer", "n2"])
def test_every_step_key_lands_on_lightnings_rows_and_is_monitorable(n: int | None) -> None:
    torch.manual_seed(0)
    logger = MemoryLogger()
    module = _Module(weight_penalty=lightning_reg.penalties.WeightPenalty(l2=1e-3))
    trainer_n = 3 if n is None else n if n else 3
    callbacks = _step_callbacks(n)
    trainer = L.Trainer(
        max_epochs=2, log_every_n_steps=trainer_n, logger=logger, callbacks=callbacks, **_QUIET
    )
    trainer.fit(module, _loader(), _loader())
    rows: dict[str, list[int]] = {}
    for step, metrics in logger.calls:
        for key in metrics:
            rows.setdefault(key, []).append(step)
    ours = {k: v for k, v in rows.items() if k.startswith(_STEP_KEY_PREFIXES)}
    if n == 0:
        # callbacks with a log_every_n_steps argument log nothing; the others follow the Trainer
        quiet = {"grad/", "stochastic_depth/"}
        assert not [k for k in ours if k.startswith(tuple(quiet))], ours
        return
    reference = rows["reference"]  # Lightning's own step metric: the rows every step key must share
    assert reference == [s for s in range(14) if (s + 1) % trainer_n == 0]
    expected_keys = {"grad/norm_total", "grad/clip/norm_pre", "stochastic_depth/max_rate",
                     "proximal_l1/zero_fraction", "penalty/value"}
    assert expected_keys <= set(ours), sorted(ours)
    for key, steps in ours.items():
        assert steps == reference, (key, steps, reference)
        assert key in trainer.callback_metrics, key  # monitorable
        assert isinstance(trainer.callback_metrics[key], torch.Tensor), key


def test_a_step_key_can_drive_model_checkpoint(tmp_path: Path) -> None:
    ckpt = ModelCheckpoint(dirpath=tmp_path, monitor="grad/norm_total", mode="min", save_top_k=1)
    args = dict(_QUIET, enable_checkpointing=True)
    trainer = L.Trainer(max_epochs=2, log_every_n_steps=1, logger=False, callbacks=[
        lightning_reg.GradientMonitor(verbose=0), ckpt], **args)
    trainer.fit(_Module(), _loader(), _loader())
    assert ckpt.best_model_path and ckpt.best_model_score is not None


def test_a_pattern_relative_to_the_wrapped_model_gets_the_full_name_suggested() -> None:
    class Wrapped(lightning_reg.RegularizedModule):
        def __init__(self) -> None:
            super().__init__(decay_rule=lightning_reg.DecayRule(exclude=["head"]), verbose=0)
            self.net = nn.Sequential()
            self.net.add_module("body", nn.Linear(4, 4))
            self.net.add_module("head", nn.Linear(4, 2))

    with pytest.warns(UserWarning, match=r"\['head'\] select no trainable parameter; did you mean 'net.head"):
        Wrapped().configure_optimizers()
    clip = lightning_reg.GradientClipping("agc", agc_exclude=["head"], verbose=0)
    trainer = L.Trainer(max_steps=1, logger=False, callbacks=[clip], **_QUIET)
    with pytest.warns(UserWarning, match=r"`agc_exclude` pattern\(s\) \['head'\].*did you mean 'net\.head'"):
        clip.setup(trainer, Wrapped(), "fit")


def test_every_callback_and_the_module_take_verbose() -> None:
    """One console switch everywhere: 0 quiet, 1 (default) one line at fit start, 2 details."""
    subpackages = [importlib.import_module(f"lightning_reg.{p}") for p in packages()]
    exported = [getattr(p, n) for p in subpackages for n in p.__all__]
    callbacks = [c for c in exported if inspect.isclass(c) and issubclass(c, L.Callback)]
    assert len(callbacks) >= 10
    for cls in [*callbacks, lightning_reg.RegularizedModule]:
        param = inspect.signature(cls).parameters.get("verbose")
        assert param is not None, f"{cls.__name__} takes no `verbose`"
        assert param.default in (1, True), (cls.__name__, param.default)

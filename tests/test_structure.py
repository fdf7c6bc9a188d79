"""The shape of the code base, checked: layers import only to their left, no import cycles
(deferred and type-checking imports included), functions that read in one screen, and one
registry entry per study that every consumer reads."""

import ast
from pathlib import Path

import pytest

from mnistlab import registry
from mnistlab.errors import MnistlabError

SRC = Path(__file__).resolve().parents[1] / "src" / "mnistlab"
MAX_LINES = 60
MAX_MODULE_LINES = 410  # "about 400": a module a newcomer reads in one sitting
# Layers, left to right: a module may import only from its own layer or those to its left.
LAYERS = ("data", "models", "train", "studies", "report")
# What each layer must never import (the right-hand layers and the command line).
FORBIDDEN = {layer: {*LAYERS[i + 1 :], "cli", "suite"} for i, layer in enumerate(LAYERS)}


def _module(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module(p): p for p in SRC.rglob("*.py")}


def _imports(path: Path) -> set[str]:
    """Every mnistlab module ``path`` imports, wherever the import statement sits."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # ``from pkg import submodule`` depends on the submodule; ``from m import name`` on m
            names = [f"{node.module}.{a.name}" for a in node.names]
            names = [n if n in MODULES else node.module for n in names]
        for name in names:
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            if name.startswith("mnistlab") and name != "mnistlab":
                found.add(name)
    return found


GRAPH = {m: _imports(p) - {m} for m, p in MODULES.items()}


def _layer(module: str) -> str:
    """``mnistlab.studies.digits.tune`` → ``studies``; ``mnistlab`` → ``""``."""
    return [*module.split("."), ""][1]


def test_no_import_cycles():
    """Tarjan's strongly connected components: every one must be a single module."""
    index, low, on_stack, stack, cycles, counter = {}, {}, set(), [], [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in GRAPH:
        if v not in index:
            visit(v)
    assert cycles == []


@pytest.mark.parametrize("layer", LAYERS)
def test_layers_import_only_to_their_left(layer):
    bad = [
        (m, target)
        for m, targets in GRAPH.items()
        if _layer(m) == layer
        for target in targets
        if _layer(target) in FORBIDDEN[layer]
    ]
    assert bad == []


def test_the_report_registry_and_figures_stay_free_of_torch_layers():
    torch_layers = {"data", "models", "train", "studies"}
    for m, targets in GRAPH.items():
        if _layer(m) in (
            "report",
            "registry",
            "summaries",
            "stats",
            "schemas",
            "figures",
            "plotting",
        ):
            assert not {_layer(t) for t in targets} & torch_layers, m


def test_no_function_is_longer_than_a_screen():
    long = []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_LINES:
                    long.append(f"{path.relative_to(SRC)}:{node.name} ({lines} lines)")
    assert long == []


def test_no_module_is_longer_than_a_sitting():
    long = [
        f"{p.relative_to(SRC)} ({n} lines)"
        for p in SRC.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    ]
    assert long == []


def _private_uses(path: Path) -> set[str]:
    """Attributes and imports of the dependencies' private APIs that ``path``'s code uses."""
    attrs = {"_fused_adam_", "convolution_backward", "record_heartbeat"}
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and node.attr in attrs:
            found.add(node.attr)
        if isinstance(node, ast.ImportFrom) and node.module and "._core" in node.module:
            found.add(node.module)
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "getattr":
            args = [a.value for a in node.args if isinstance(a, ast.Constant)]
            found |= attrs & set(args)
    return found


def test_every_private_api_of_a_dependency_lives_in_compat():
    """torch's fused Adam and positional convolution backward, NumPy's private reconstructor,
    Optuna's heartbeat methods: one module (compat.py), with a public fallback for each."""
    users = {str(p.relative_to(SRC)) for p in SRC.rglob("*.py") if _private_uses(p)}
    assert users == {"compat.py"}


def test_every_study_is_complete_in_the_registry():
    """Config, run function and report builder resolve; best protocols name an as-specified
    baseline listed before them (the report passes it the baseline's folder)."""
    names = list(registry.STUDIES)
    for study in registry.STUDIES.values():
        assert callable(study.run) and callable(study.report)
        assert study.config().device == "auto"  # the defaults build
        assert study.protocol in registry.PROTOCOL_NAMES
        if study.baseline is not None:
            assert names.index(study.baseline) < names.index(study.name)


@pytest.mark.parametrize("profile", (*registry.PROFILES, "tiny"))
def test_every_profile_builds_a_config_for_every_study(profile):
    configs = registry.profile_configs(profile, seed=3, device="cpu")
    assert list(configs) == [s.name for s in registry.in_protocol("both")]
    assert all(c.seed == 3 and c.device == "cpu" for c in configs.values())
    if profile == "quick":
        assert configs["stn"].epochs < registry.get("stn").config().epochs


def test_opt_in_studies_run_in_run_all_only_when_named():
    assert registry.OPT_IN == ("stn-best", "stn-paper")
    assert "stn-paper" not in [s.name for s in registry.in_protocol("both")]
    named = [s.name for s in registry.in_protocol("both", ("stn-paper",))]
    assert named.index("stn-paper") == named.index("stn-deform") + 1  # in registry order
    with pytest.raises(MnistlabError, match="runs anyway"):
        registry.in_protocol("both", ("stn",))
    with pytest.raises(MnistlabError, match="specified protocol"):
        registry.in_protocol("best", ("stn-paper",))
    configs = registry.profile_configs("quick", protocol="specified", with_=("stn-paper",))
    assert configs["stn-paper"].epochs < registry.get("stn-paper").config().epochs_run

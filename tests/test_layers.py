"""The package's layers import one way only (docs/design.md, "Layers").

The import graph of ``src/fewstep`` is read from the source (ast), every import counted, also those inside
functions. The test fails on an import cycle between modules, on an import that runs up the layer order
(or across to another family), and on a function-local import of a fewstep module outside the entry points,
where it could only be dodging a cycle. ``LAYERS`` below is the one table of the layers.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# (layer, module prefixes, the layers it may import besides its own). Bottom to top; a module belongs to the
# layer of its longest matching prefix. A family beside the diffusion stack (lm today; distill, steer, mcmc
# next) names exactly the layers it builds on and never another family.
BASE = "base"
LAYERS: list[tuple[str, tuple[str, ...], tuple[str, ...]]] = [
    (BASE, ("fewstep._version", "fewstep._verify", "fewstep.seeds", "fewstep.limits", "fewstep.cache"), ()),
    ("metrics", ("fewstep.metrics",), (BASE,)),
    ("lm", ("fewstep.lm",), (BASE,)),
    ("diffusion core", ("fewstep.diffusion.processes", "fewstep.diffusion.conversions", "fewstep.diffusion.denoiser",
                        "fewstep.diffusion.schedules", "fewstep.diffusion.noise", "fewstep.diffusion.adapters",
                        "fewstep.diffusion.from_diffusers", "fewstep.diffusion.reference", "fewstep.diffusion"),
     (BASE,)),
    ("mcmc", ("fewstep.mcmc",), (BASE, "metrics", "diffusion core")),
    ("solvers", ("fewstep.diffusion.solvers",), (BASE, "diffusion core")),
    ("driver", ("fewstep.diffusion.sampling", "fewstep.diffusion.recipe", "fewstep.diffusion.corrections",
                "fewstep.diffusion.guidance", "fewstep.diffusion.defaults"), (BASE, "diffusion core", "solvers")),
    ("models and integrations", ("fewstep.models", "fewstep.integrations"),
     (BASE, "metrics", "diffusion core", "solvers", "driver")),
    ("evaluation", ("fewstep.evaluation",), (BASE, "metrics", "diffusion core", "solvers", "driver",
                                             "models and integrations")),
    ("distill", ("fewstep.distill",), (BASE, "metrics", "diffusion core", "solvers", "driver",
                                       "models and integrations", "evaluation")),
    ("steer", ("fewstep.steer",), (BASE, "metrics", "diffusion core", "solvers", "driver", "models and integrations",
                                   "evaluation")),
    ("tune", ("fewstep.diffusion.tune",), (BASE, "metrics", "diffusion core", "solvers", "driver",
                                           "models and integrations", "evaluation")),
    ("bench", ("fewstep.bench",), (BASE, "metrics", "diffusion core", "solvers", "driver", "models and integrations",
                                   "evaluation", "tune")),
    ("cli", ("fewstep.commands", "fewstep.cli", "fewstep.__main__", "fewstep"),
     (BASE, "metrics", "lm", "diffusion core", "mcmc", "solvers", "driver", "models and integrations", "evaluation",
      "distill", "steer", "tune", "bench")),
]
# Function-local imports of fewstep modules are allowed only here: the entry points defer the library so that
# `import fewstep` and `fewstep --help` stay fast.
LAZY_ENTRY_POINTS = ("fewstep", "fewstep.cli", "fewstep.commands")
# Optional heavy libraries: a module that imports one at its top may itself be imported lazily.
HEAVY = ("diffusers", "transformers", "matplotlib")


def _modules() -> dict[str, tuple[Path, bool]]:
    out = {}
    for path in (SRC / "fewstep").rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        out[".".join(parts)] = (path, is_package)
    return out


MODULES = _modules()


def _resolve(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str) -> list[tuple[str, bool, int]]:
    """``(imported fewstep module, inside a function, line)`` for every import in ``module``;
    a third-party import is returned as ``"ext:<name>"``."""
    path, is_package = MODULES[module]
    tree = ast.parse(path.read_text(), str(path))
    local = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
             for n in ast.walk(f) if isinstance(n, (ast.Import, ast.ImportFrom))}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module if is_package else module.rpartition(".")[0]
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                base = f"{package}.{base}" if base else package
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for name in names:
            target = _resolve(name) if name.split(".")[0] == "fewstep" else f"ext:{name}"
            out.append((target, id(node) in local, node.lineno))
    return out


GRAPH = {m: _imports(m) for m in MODULES}


def layer_of(module: str) -> str:
    best = max(((p, name) for name, prefixes, _ in LAYERS for p in prefixes
                if module == p or module.startswith(p + ".")), key=lambda t: len(t[0]), default=None)
    if best is None:
        raise AssertionError(f"{module} is in no layer; add it to LAYERS in tests/test_layers.py")
    return best[1]


ALLOWED = {name: set(below) | {name} for name, _, below in LAYERS}


def test_every_module_is_in_a_layer_and_layers_only_name_known_layers():
    names = [name for name, _, _ in LAYERS]
    for module in MODULES:
        layer_of(module)
    for name, _, below in LAYERS:
        assert set(below) <= set(names[:names.index(name)]), f"layer {name!r} may only build on layers listed before it"


def test_no_import_runs_up_or_across_the_layers():
    bad = [f"{m}:{line} ({layer_of(m)}) imports {t} ({layer_of(t)})" for m, edges in GRAPH.items()
           for t, _, line in edges if not t.startswith("ext:") and layer_of(t) not in ALLOWED[layer_of(m)]]
    assert not bad, "upward or cross-family imports:\n" + "\n".join(bad)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), or a module importing itself."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph[v]:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_the_import_graph_has_no_cycle():
    graph = {m: {t for t, _, _ in edges if not t.startswith("ext:") and t != m} for m, edges in GRAPH.items()}
    assert not _cycles(graph)


def test_the_cycle_check_can_fail():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def _heavy(module: str) -> bool:
    return any(t.startswith("ext:") and t[4:].split(".")[0] in HEAVY and not local for t, local, _ in GRAPH[module])


def test_function_local_imports_are_only_for_speed_or_optional_libraries():
    bad = [f"{m}:{line} imports {t} inside a function" for m, edges in GRAPH.items()
           if not any(m == p or m.startswith(p + ".") for p in LAZY_ENTRY_POINTS) or m == "fewstep.diffusion"
           for t, local, line in edges if local and not t.startswith("ext:") and not _heavy(t)]
    assert not bad, "move these imports to the module top (or fix the layering):\n" + "\n".join(bad)


@pytest.mark.parametrize("package", ["fewstep.metrics", "fewstep.lm"])
def test_families_load_no_diffusion_module(package):
    code = (f"import sys, {package}; bad = sorted(m for m in sys.modules if m.startswith('fewstep.diffusion')); "
            "print(bad); raise SystemExit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, f"import {package} loaded {proc.stdout.strip()} {proc.stderr[-2000:]}"


def test_the_layer_check_can_fail():
    assert layer_of("fewstep.diffusion.tune.ld3") == "tune" and layer_of("fewstep.diffusion.sampling") == "driver"
    assert layer_of("fewstep.diffusion.solvers.dc") == "solvers" and layer_of("fewstep.diffusion") == "diffusion core"
    assert "tune" not in ALLOWED["driver"] and "driver" not in ALLOWED["solvers"]  # what the old circle did
    assert "lm" not in ALLOWED["metrics"] and "diffusion core" not in ALLOWED["lm"]  # families stay apart


def test_benchmarks_and_scripts_use_only_public_modules():
    root = SRC.parent
    bad = []
    for path in sorted([*(root / "benchmarks").glob("*.py"), *(root / "scripts").glob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [f"{node.module}.{a.name}" for a in node.names] if isinstance(node, ast.ImportFrom) else [])
            bad += [f"{path.name}:{node.lineno} {n}" for n in names
                    if n.split(".")[0] == "fewstep" and any(part.startswith("_") for part in n.split("."))]
    assert not bad, "benchmarks/ and scripts/ import private modules:\n" + "\n".join(bad)

"""The package's import structure: no cycles, one namespace, and the device half standing alone.

Walks every module of the five source folders with the standard library's `ast` (nothing is
imported), so a cycle hidden behind ``TYPE_CHECKING`` or inside a function counts as well.
"""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("edge_client", "server", "model_export", "firmware_sim", "tools")
# What the device half may import from third parties: its own install (fedge[edge]) only.
EDGE_THIRD_PARTY = {
    "numpy",
    "paho",
    "aiomqtt",
    "cryptography",
    "msgpack",
    "h11",
    "tflite_runtime",
    "ai_edge_litert",
    "uvloop",  # optional: used when installed (event_loop.py)
}


def module_name(path: Path) -> str:
    """``server/web/api.py`` -> ``fedge.server.web.api``."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(["fedge", *parts])


def source_modules() -> dict[str, Path]:
    return {
        module_name(p): p
        for folder in FOLDERS
        for p in sorted((ROOT / folder).rglob("*.py"))
        if "__pycache__" not in p.parts
    }


def imports_of(path: Path, name: str) -> Iterator[tuple[str, int]]:
    """Every absolute module name ``path`` imports (anywhere in the file), with its line."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base]) if base else ".".join(anchor)
            yield base, node.lineno
            for alias in node.names:  # `from fedge.server import store` imports a module
                yield f"{base}.{alias.name}", node.lineno


def ancestors(module: str) -> list[str]:
    """``a.b.c`` -> [``a``, ``a.b``]: the packages whose __init__ runs before ``a.b.c``."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def internal_graph() -> dict[str, set[str]]:
    """Module -> the fedge modules importing it runs (a package counts as its __init__).

    Importing ``a.b.c`` first runs ``a/__init__`` and ``a/b/__init__`` unless they already
    run (the importer is inside them), so those are edges too: a cycle can close through a
    package's __init__ without any module naming its neighbour directly.
    """
    modules = source_modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        own = set(ancestors(name)) | ({name} if path.name == "__init__.py" else set())
        edges = set()
        for target, _ in imports_of(path, name):
            for module in [*ancestors(target), target]:
                if module in modules and module != name and module not in own:
                    edges.add(module)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules, or None (iterative DFS, three colours)."""
    colour = dict.fromkeys(graph, 0)
    for start in sorted(graph):
        if colour[start]:
            continue
        stack: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(graph[start])))]
        path = [start]
        colour[start] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                colour[node] = 2
                stack.pop()
                path.pop()
            elif colour[child] == 1:
                return [*path[path.index(child) :], child]
            elif colour[child] == 0:
                colour[child] = 1
                path.append(child)
                stack.append((child, iter(sorted(graph[child]))))
    return None


def is_package_init_edge(a: str, b: str) -> bool:
    """A package's __init__ re-exporting its own sub-modules is not a cycle of design."""
    return b.startswith(a + ".")


def test_no_import_cycles() -> None:
    graph = internal_graph()
    # A sub-module importing its parent package's name resolves to that package's __init__,
    # which in turn imports the sub-module to re-export it: that pair is how Python packages
    # work, not a cycle between modules. Every other edge counts.
    pruned = {
        a: {b for b in targets if not is_package_init_edge(b, a)} for a, targets in graph.items()
    }
    cycle = find_cycle(pruned)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_every_module_imports_on_its_own() -> None:
    """Import each module first in a fresh interpreter: an import-order cycle fails here."""
    import subprocess
    import sys

    names = sorted(
        n
        for n in source_modules()
        if not n.startswith(("fedge.model_export", "fedge.tools.bench"))  # TensorFlow: slow
        and not n.endswith(".__main__")  # runs a command when imported
    )
    script = (
        "import importlib, sys\n"
        "bad = []\n"
        "for name in sys.argv[1:]:\n"
        "    for key in [k for k in sys.modules if k.startswith('fedge')]:\n"
        "        del sys.modules[key]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except ImportError as exc:\n"
        "        bad.append(f'{name}: {exc}')\n"
        "print('\\n'.join(bad))\n"
    )
    done = subprocess.run([sys.executable, "-c", script, *names], capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == ""


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_every_import_of_ours_goes_through_the_fedge_namespace() -> None:
    bad = []
    for name, path in source_modules().items():
        for target, line in imports_of(path, name):
            if target.split(".")[0] in FOLDERS:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    for path in sorted((ROOT / "tests").rglob("*.py")):
        for target, line in imports_of(path, "tests"):
            if target.split(".")[0] in FOLDERS:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    assert not bad, "\n".join(bad)


def test_edge_client_imports_nothing_else_of_ours_and_no_tensorflow() -> None:
    bad = []
    for name, path in source_modules().items():
        if not name.startswith("fedge.edge_client"):
            continue
        for target, line in imports_of(path, name):
            top = target.split(".")[0]
            if target.startswith("fedge.") and not target.startswith("fedge.edge_client"):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
            elif top in ("tensorflow", "keras", "tensorflow_federated"):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    assert not bad, "\n".join(bad)


def test_edge_client_third_party_imports_are_the_device_install() -> None:
    import sys

    stdlib = sys.stdlib_module_names
    bad = []
    for name, path in source_modules().items():
        if not name.startswith("fedge.edge_client"):
            continue
        for target, line in imports_of(path, name):
            top = target.split(".")[0]
            if top in ("fedge", "__future__") or top in stdlib or top in EDGE_THIRD_PARTY:
                continue
            bad.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    assert not bad, "\n".join(bad)


def test_only_model_export_and_the_benchmarks_import_tensorflow() -> None:
    bad = []
    for name, path in source_modules().items():
        if name.startswith(("fedge.model_export", "fedge.tools.bench")):
            continue
        for target, line in imports_of(path, name):
            if target.split(".")[0] in ("tensorflow", "tensorflow_federated"):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    assert not bad, "\n".join(bad)


def test_the_build_installs_every_package_folder_under_fedge() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapping = config["package-dir"]
    assert mapping == {f"fedge.{folder}": folder for folder in FOLDERS}
    on_disk = {
        module_name(init.parent / "__init__.py")
        for folder in FOLDERS
        for init in (ROOT / folder).rglob("__init__.py")
    }
    assert set(config["packages"]) == on_disk


@pytest.mark.parametrize("folder", FOLDERS)
def test_every_folder_is_a_regular_package(folder: str) -> None:
    missing = [
        str(d.relative_to(ROOT))
        for d in [ROOT / folder, *(ROOT / folder).rglob("*")]
        if d.is_dir() and d.name != "__pycache__" and any(d.glob("*.py"))
        if not (d / "__init__.py").exists()
    ]
    assert not missing, f"folders with modules but no __init__.py: {missing}"

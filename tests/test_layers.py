"""The three floors, checked statically: every import of every module, inside functions too.

- the data floor (``prefcurate/`` but the CLI, recipes and integrations) never imports torch,
  transformers, peft, safetensors, accelerate or ``trainers``, nor the CLI or recipes;
- the trainer floor (``trainers/``) imports from ``prefcurate`` only the split contract
  (:data:`CONTRACT`), never the CLI, recipes or integrations;
- recipes never import the CLI or integrations; integrations never import the CLI or recipes;
- inside the data floor, a package imports only the packages below it (:data:`DATA_PACKAGES`);
- no module of prefcurate/, trainers/ or benchmarks/ is part of an import cycle.

See docs/architecture.md. A lazy import inside a function is still an import: ``ast`` sees it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: What the trainer may take from the data floor: names, errors, atomic writes (with the output
#: guard and interrupt clean-up they use), cache rules.
CONTRACT = {
    "prefcurate.base.errors",
    "prefcurate.data.schema",
    "prefcurate.base.atomic",
    "prefcurate.base.outdir",
    "prefcurate.base.interrupt",
    "prefcurate.base.cachedir",
    "prefcurate.base.sizes",
    "prefcurate.base.log",
    "prefcurate.scoring.spec",
}

#: The data floor's packages, lowest first: each may import only itself and those before it.
DATA_PACKAGES = ("base", "data", "catalog", "scoring", "routing", "reporting", "commands")

MODEL_LIBRARIES = ("torch", "transformers", "peft", "safetensors", "accelerate", "trl")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path, module: str | None = None) -> list[tuple[int, str]]:
    """Every module ``path`` imports (absolute names, relative ones resolved), with its line."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    module = module or module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.append((node.lineno, base))
            if (REPO / base.replace(".", "/")).is_dir():  # ``from prefcurate import recipes``
                found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
        elif isinstance(node, ast.Call) and _is_import_module(node):
            found.append((node.lineno, node.args[0].value))
    return found


def _is_import_module(node: ast.Call) -> bool:
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
    return (
        name in ("import_module", "__import__")
        and bool(node.args)
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
    )


def floor(module: str) -> str:
    if module == "prefcurate.cli" or module.startswith(("prefcurate.cli.", "prefcurate.__main__")):
        return "cli"
    if module.startswith("prefcurate.recipes"):
        return "recipes"
    if module.startswith("prefcurate.integrations"):
        return "integrations"
    if module.startswith("prefcurate"):
        return "data"
    return "trainer"


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def violation(module: str, imported: str) -> str | None:
    """Why ``module`` may not import ``imported``, or None when it may."""
    where = floor(module)
    if where == "cli":
        return None
    upper = [p for p in ("prefcurate.cli", "prefcurate.__main__") if _under(imported, p)]
    if upper:
        return "only the entry point imports the CLI"
    if where == "data":
        if any(_under(imported, lib) for lib in (*MODEL_LIBRARIES, "trainers")):
            return "the data floor never imports torch, transformers or trainers"
        if _under(imported, "prefcurate.recipes") or _under(imported, "prefcurate.integrations"):
            return "the data floor never imports recipes or integrations"
    if where == "trainer" and _under(imported, "prefcurate"):
        if imported == "prefcurate" or not any(_under(imported, c) for c in CONTRACT):
            return f"the trainer takes from prefcurate only {sorted(CONTRACT)}"
    if where == "recipes" and _under(imported, "prefcurate.integrations"):
        return "recipes never import integrations"
    if where == "integrations" and _under(imported, "prefcurate.recipes"):
        return "integrations never import recipes"
    return None


def all_modules() -> list[Path]:
    return sorted([*(REPO / "prefcurate").rglob("*.py"), *(REPO / "trainers").rglob("*.py")])


def data_package(module: str) -> str | None:
    """The data-floor package of ``module`` (``prefcurate.routing.plan`` → ``routing``)."""
    parts = module.split(".")
    if len(parts) > 1 and parts[0] == "prefcurate" and parts[1] in DATA_PACKAGES:
        return parts[1]
    return None


def import_graph(paths: list[Path]) -> dict[str, set[str]]:
    """Module → the modules it imports among ``paths`` (a name resolves to its longest module)."""
    known = {module_name(p): p for p in paths}

    def resolve(name: str) -> str | None:
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for module, path in known.items():
        targets = {resolve(name) for _, name in imports(path, module)}
        graph[module] = {t for t in targets if t is not None and t != module}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_every_import_of_every_module_respects_the_floors():
    broken = []
    for path in all_modules():
        module = module_name(path)
        for line, imported in imports(path):
            why = violation(module, imported)
            if why:
                broken.append(f"{path.relative_to(REPO)}:{line} imports {imported}: {why}")
    assert not broken, "\n".join(broken)


def test_no_import_cycle_in_the_project_or_its_benchmarks():
    graph = import_graph([*all_modules(), *sorted((REPO / "benchmarks").glob("*.py"))])
    assert cycles(graph) == []


def test_a_cycle_is_found_when_there_is_one():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_each_data_package_imports_only_the_packages_below_it():
    broken = []
    for path in all_modules():
        module = module_name(path)
        own = data_package(module)
        if own is None:
            continue
        allowed = DATA_PACKAGES[: DATA_PACKAGES.index(own) + 1]
        for line, imported in imports(path, module):
            other = data_package(imported)
            if other is not None and other not in allowed:
                broken.append(f"{path.relative_to(REPO)}:{line} ({own}) imports {imported}")
    assert not broken, "\n".join(broken)


def test_the_data_floor_is_only_packages():
    loose = [
        p.name
        for p in (REPO / "prefcurate").glob("*.py")
        if p.name not in ("__init__.py", "__main__.py")
    ]
    assert loose == [], f"modules outside a package: {loose}"


@pytest.mark.parametrize(
    ("module", "imported", "allowed"),
    [
        ("prefcurate.routing.plan", "torch", False),
        ("prefcurate.scoring.scores", "trainers.scoring", False),
        ("prefcurate.reporting.analyze", "prefcurate.recipes.demo", False),
        ("prefcurate.routing.plan", "polars", True),
        ("trainers.loop", "prefcurate.base.atomic", True),
        ("trainers.scoring", "prefcurate.scoring.scores", False),
        ("trainers.loop", "prefcurate.cli", False),
        ("trainers.loop", "prefcurate", False),
        ("prefcurate.recipes.bench", "trainers.loop", True),
        ("prefcurate.recipes.bench", "prefcurate.cli", False),
        ("prefcurate.cli", "trainers.loop", True),
    ],
)
def test_the_rule_itself(module, imported, allowed):
    assert (violation(module, imported) is None) is allowed


def test_a_lazy_import_inside_a_function_is_seen(tmp_path):
    source = tmp_path / "lazy.py"
    source.write_text("def f():\n    import torch\n    from trainers.loop import train\n")
    assert [name for _, name in imports(source, "prefcurate.lazy")] == ["torch", "trainers.loop"]


def test_the_scan_covers_every_floor():
    floors = {floor(module_name(p)) for p in all_modules()}
    assert floors >= {"cli", "recipes", "data", "trainer"}

"""Every import inside `difaug/` points to a lower layer (or its own), and no two parts import each other.

The layers follow the data path (ARCHITECTURE.md, "Layers") and each is a subpackage, so the tree
`ls difaug/` shows is the layer table. Each module of the package is parsed with `ast`; imports at
module level, inside functions and under `if TYPE_CHECKING:` all count: a lazy import is still a
dependency, only a later one, and a type named in an annotation is one a reader has to look up.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "difaug"

# Layer number → the subpackages on it: the package tree is this table. A module may import any
# part on its own layer or below, never above.
LAYERS: dict[int, tuple[str, ...]] = {
    0: ("difaug", "difaug.core"),  # helpers, settings, files and images: nothing of samples or runs
    1: ("difaug.inputs",),  # manifest rows (`Sample`) and the manifest builders
    2: ("difaug.conditions",),  # per-sample work before the model
    3: ("difaug.diffusion",),  # the models, the sampler and DiffSeg
    4: ("difaug.testing",),  # stand-ins and tiny models (tests, benchmarks, `models make-tiny`)
    5: ("difaug.run",),  # the run directory, the driver, the executors and the shard task
    6: ("difaug.adapters", "difaug.report"),  # consumers of a finished run
    7: ("difaug.cli", "difaug.__main__"),  # the command line
}

# (importing part, imported part) → why it is allowed for now. Each names the file to change; the
# test fails once an exception is no longer needed, so the list only shrinks.
KNOWN_EXCEPTIONS: dict[tuple[str, str], str] = {}


@dataclass(frozen=True)
class Import:
    importer: str  # module name
    target: str  # module name
    file: str
    line: int
    lazy: bool  # inside a function

    def where(self) -> str:
        return f"{self.file}:{self.line}{' (inside a function)' if self.lazy else ''}"


def module_name(path: Path, package_dir: Path) -> str:
    parts = path.relative_to(package_dir.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_nodes(node: ast.AST, lazy: bool = False) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child, lazy
        inner = lazy or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        yield from _import_nodes(child, inner)


def package_imports(package_dir: Path) -> tuple[set[str], list[Import]]:
    """Every module of the package and every import between them."""
    files = sorted(package_dir.rglob("*.py"))
    modules = {module_name(f, package_dir) for f in files}
    root = package_dir.name
    found: list[Import] = []
    for f in files:
        name = module_name(f, package_dir)
        package = name if f.name == "__init__.py" else name.rpartition(".")[0]
        rel = f.relative_to(package_dir.parent).as_posix()
        for node, lazy in _import_nodes(ast.parse(f.read_text(encoding="utf-8"), rel)):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                # `from difaug import imageio` imports the module difaug.core.imageio;
                # `from difaug import __version__` a name of the package.
                targets = [
                    f"{source}.{a.name}" if f"{source}.{a.name}" in modules else source for a in node.names
                ]
            for target in targets:
                if target == root or target.startswith(root + "."):
                    found.append(Import(name, target, rel, node.lineno, lazy))
    return modules, found


def part_of(module: str, layers: dict[int, tuple[str, ...]]) -> str | None:
    """The longest part in `layers` that is `module` or a package above it (the top package only
    stands for its own `__init__`, so a new module is never mapped by accident)."""
    best = None
    for parts in layers.values():
        for part in parts:
            inside = "." in part and module.startswith(part + ".")
            if (module == part or inside) and (best is None or len(part) > len(best)):
                best = part
    return best


def layering_problems(
    package_dir: Path,
    layers: dict[int, tuple[str, ...]],
    exceptions: dict[tuple[str, str], str],
) -> list[str]:
    """One line per module without a layer, import to a higher layer, import circle between parts,
    or exception no longer needed."""
    layer_of = {part: n for n, parts in layers.items() for part in parts}
    modules, imports = package_imports(package_dir)
    problems = [
        f"{m} has no layer: add it to LAYERS in tests/test_layers.py (and ARCHITECTURE.md)"
        for m in sorted(modules)
        if part_of(m, layers) is None
    ]
    edges: dict[tuple[str, str], Import] = {}
    for imp in imports:
        src, dst = part_of(imp.importer, layers), part_of(imp.target, layers)
        if src is None or dst is None or src == dst:
            continue
        edges.setdefault((src, dst), imp)
        if layer_of[dst] > layer_of[src] and (src, dst) not in exceptions:
            problems.append(
                f"{imp.where()}: {imp.importer} (layer {layer_of[src]}) imports {imp.target} "
                f"(layer {layer_of[dst]}, higher): move what it needs to layer {layer_of[src]} or below"
            )
    for (src, dst), imp in sorted(edges.items()):
        back = edges.get((dst, src))
        if back is not None and src < dst and not ({(src, dst), (dst, src)} & exceptions.keys()):
            problems.append(f"import circle: {imp.where()} imports {dst}, and {back.where()} imports {src}")
    problems += [
        f"known exception {src} → {dst} ({why}) is gone: remove it from KNOWN_EXCEPTIONS"
        for (src, dst), why in exceptions.items()
        if (src, dst) not in edges
    ]
    return problems


def test_every_import_points_down_and_no_circles() -> None:
    problems = layering_problems(PACKAGE_DIR, LAYERS, KNOWN_EXCEPTIONS)
    assert not problems, "\n".join(problems)


def test_no_part_on_two_layers() -> None:
    parts = [p for ps in LAYERS.values() for p in ps]
    assert len(parts) == len(set(parts))


def test_the_package_root_holds_only_the_layer_packages() -> None:
    """`ls difaug/` reads like the data-flow picture: one folder per layer part, no loose modules."""
    packages = {f"difaug.{p.name}" for p in PACKAGE_DIR.iterdir() if (p / "__init__.py").is_file()}
    modules = {p.name for p in PACKAGE_DIR.glob("*.py")}
    parts = {p for ps in LAYERS.values() for p in ps if p.count(".") == 1}
    assert packages == parts - {"difaug.__main__"}
    assert modules == {"__init__.py", "__main__.py"}


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "pkg"


def test_checker_finds_upward_imports_circles_and_unmapped_modules(tmp_path: Path) -> None:
    package = _write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/low.py": "def f():\n    from pkg.high import g  # lazy, still upward\n",
            "pkg/high.py": "from . import low\n",
            "pkg/stray.py": "",
            "pkg/typed.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.high import g\n",
            "pkg/sub/__init__.py": "from pkg.sub import leaf\n",
            "pkg/sub/leaf.py": "from .. import high\n",
        },
    )
    layers = {0: ("pkg", "pkg.low", "pkg.typed"), 1: ("pkg.high",), 2: ("pkg.sub",)}
    problems = layering_problems(package, layers, {})
    assert problems == [
        "pkg.stray has no layer: add it to LAYERS in tests/test_layers.py (and ARCHITECTURE.md)",
        "pkg/low.py:2 (inside a function): pkg.low (layer 0) imports pkg.high (layer 1, higher): "
        "move what it needs to layer 0 or below",
        "pkg/typed.py:3: pkg.typed (layer 0) imports pkg.high (layer 1, higher): "
        "move what it needs to layer 0 or below",
        "import circle: pkg/high.py:1 imports pkg.low, and pkg/low.py:2 (inside a function) imports pkg.high",
    ]
    # A listed exception silences both findings; one whose import is gone is reported.
    excused = {("pkg.low", "pkg.high"): "test", ("pkg.high", "pkg.sub"): "stale"}
    excused[("pkg.typed", "pkg.high")] = "test"
    assert layering_problems(package, layers, excused)[1:] == [
        "known exception pkg.high → pkg.sub (stale) is gone: remove it from KNOWN_EXCEPTIONS"
    ]


@pytest.mark.parametrize(
    ("module", "part"),
    [
        ("difaug.conditions.hed", "difaug.conditions"),
        ("difaug", "difaug"),
        ("difaug.cli.manifest", "difaug.cli"),
        ("difaug.run.task", "difaug.run"),
    ],
)
def test_part_of_takes_the_longest_prefix(module: str, part: str) -> None:
    assert part_of(module, LAYERS) == part

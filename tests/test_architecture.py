"""The shape of the package: layers that only look down, no import cycle, declared boundaries.

The layers, bottom to top (README, "Architecture"): the vocabulary; the math
(``planning``, ``codes``, ``learning``); the wire; the schemes; the command line's
configuration; the job; the entry points and benchmarks. A module imports only from
its own layer or the ones below, function-local imports included; a scheme is a
module, and roles, loop and report never name one.
"""

from __future__ import annotations

import ast
from pathlib import Path

from hmtl_mpi.schemes import REGISTRY, get
from hmtl_mpi.schemes.base import Scheme

PKG = Path(__file__).resolve().parent.parent / "hmtl_mpi"

LAYERS = [
    ("vocabulary",),
    ("codes", "planning", "learning"),
    ("wire",),
    ("schemes",),
    ("job.config", "cli"),
    ("job",),
    ("plan", "topology", "__main__", "bench", "__init__"),
]


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(["hmtl_mpi"] + parts)


MODULES = {module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def layer_of(module: str) -> int:
    rest = module.removeprefix("hmtl_mpi").lstrip(".") or "__init__"
    best, found = -1, None
    for n, names in enumerate(LAYERS):
        for name in names:
            if (rest == name or rest.startswith(name + ".")) and len(name) > best:
                best, found = len(name), n
    assert found is not None, f"{module} is in no layer: add it to LAYERS"
    return found


def imports_of(module: str) -> list:
    """(imported project module, line, function-local?) of every import statement."""
    path = MODULES[module]
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    local = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
             for n in ast.walk(f)}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            names = [f"{source}.{a.name}" if f"{source}.{a.name}" in MODULES else source
                     for a in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] == "hmtl_mpi":
                while name not in MODULES and "." in name:
                    name = name.rsplit(".", 1)[0]
                out.append((name, node.lineno, id(node) in local))
    return out


GRAPH = {m: imports_of(m) for m in MODULES}


def test_every_module_imports_only_its_layer_and_below():
    wrong = [f"{m} (layer {layer_of(m)}) imports {t} (layer {layer_of(t)}), line {line}"
             for m, edges in GRAPH.items() for t, line, _ in edges if layer_of(t) > layer_of(m)]
    assert wrong == [], "\n".join(wrong)


def test_no_import_cycle_function_local_imports_included():
    state, stack, cycles = {}, [], []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for t, _, _ in GRAPH[m]:
            if t == m or (MODULES[t].name == "__init__.py" and m.startswith(t + ".")):
                continue                   # a module's own package, imported while it loads
            if state.get(t) == "open":
                cycles.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = "done"
    for m in MODULES:
        if m not in state:
            visit(m)
    assert cycles == [], "\n".join(" -> ".join(c) for c in cycles)


def test_the_vocabulary_imports_nothing_of_the_project():
    assert GRAPH["hmtl_mpi.vocabulary"] == []


def test_the_wire_imports_nothing_from_schemes_report_command_line_or_job():
    for name in ("hmtl_mpi.wire.roles", "hmtl_mpi.wire.transport", "hmtl_mpi.wire.inprocess",
                 "hmtl_mpi.wire.interfaces"):
        bad = [t for t, _, _ in GRAPH[name]
               if t.startswith(("hmtl_mpi.schemes", "hmtl_mpi.job", "hmtl_mpi.cli",
                                "hmtl_mpi.plan", "hmtl_mpi.bench"))]
        assert bad == [], (name, bad)


def test_parts_reach_the_wire_only_through_their_links():
    """Schemes import no wire module, and no part touches an endpoint or MPI: a part's
    ``net`` is its role's declared links (hmtl_mpi.wire.interfaces)."""
    for m, edges in GRAPH.items():
        if m.startswith("hmtl_mpi.schemes"):
            assert not [t for t, _, _ in edges if t.startswith("hmtl_mpi.wire")], m
            text = MODULES[m].read_text()
            assert "net.endpoint" not in text and "net.links" not in text, m


def test_function_local_imports_say_why():
    """A function-local import only where it buys start-up time (or keeps MPI out), with a
    ``# local: ...`` comment on its line or the line above."""
    silent = []
    for m, path in MODULES.items():
        lines = path.read_text().splitlines()
        tree = ast.parse(path.read_text())
        for f in ast.walk(tree):
            if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(f):
                    if isinstance(node, (ast.Import, ast.ImportFrom)):
                        here = lines[node.lineno - 1] + lines[node.lineno - 2]
                        if "# local:" not in here:
                            silent.append(f"{path.relative_to(PKG)}:{node.lineno}")
    assert silent == [], silent


def test_the_math_stays_free_of_mpi():
    pure = [m for m in MODULES if layer_of(m) <= 1 or m.startswith("hmtl_mpi.schemes")] + [
        "hmtl_mpi.wire.interfaces", "hmtl_mpi.wire.roles", "hmtl_mpi.wire.inprocess",
        "hmtl_mpi.job.checks", "hmtl_mpi.job.report", "hmtl_mpi.job.config",
        "hmtl_mpi.job.verify"]
    for name in pure:
        tree = ast.parse(MODULES[name].read_text())
        imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert not any("mpi4py" in m for m in imported), name


# --- a scheme is a module ----------------------------------------------------------------------

# Where scheme names may appear in code: the schemes themselves; the argument parsing
# (choices, the 'both' alias, the plan CLI's default); the benchmarks, whose experiments
# are defined as comparisons of named schemes (the paper's figures: coded vs uncoded); the
# planners' tables, which set a plan's loads beside the uncoded ones (Example 1).
ALLOWED = {"schemes", "cli.py", "plan.py", "bench", "planning"}


def _docstrings(tree) -> set:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
    return found


def test_no_scheme_name_outside_the_schemes():
    names = {name for _, name in REGISTRY} | {"both"}
    offenders = []
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG)
        if rel.parts[0] in ALLOWED:
            continue
        tree = ast.parse(path.read_text())
        docs = _docstrings(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                    and id(node) not in docs and node.value in names:
                offenders.append(f"{rel}:{node.lineno}: {node.value!r}")
            if isinstance(node, ast.Attribute) and node.attr == "scheme":
                parent_cmp = [n for n in ast.walk(tree) if isinstance(n, ast.Compare)
                              and node in ast.walk(n) and any(
                                  isinstance(c, ast.Constant) and c.value in names
                                  for c in [n.left, *n.comparators])]
                offenders += [f"{rel}:{node.lineno}: compares .scheme" for _ in parent_cmp]
    assert offenders == [], "scheme names in role/loop/report code:\n" + "\n".join(offenders)


def test_every_registered_scheme_is_a_complete_module():
    assert list(REGISTRY) == [("mtl", "uncoded"), ("mtl", "coded"), ("mtl", "joint"),
                              ("gd", "uncoded"), ("gd", "gc"), ("gd", "hgc"),
                              ("gd", "hgc-jncss")]
    modules = set()
    for (workload, name), cls in REGISTRY.items():
        assert issubclass(cls, Scheme) and cls.name == name and cls.workload == workload
        assert get(name, workload) is cls and cls.summary
        assert cls.steps or cls.barrier_free          # steps, or one iterate() per iteration
        module = cls.__module__.rsplit(".", 1)[1]
        assert (PKG / "schemes" / f"{module}.py").exists() and module not in modules
        modules.add(module)
        keys = {key for key, _ in cls.steps}
        assert keys <= {"local_update", "user_to_relay", "encode", "relay_to_server",
                        "server_to_relay", "decode", "global_update", "relay_to_user"}


def test_every_layer_folder_is_a_package():
    """A folder without __init__.py would be left out of a wheel (and of the docker image,
    which installs one): every folder holding modules is a regular package."""
    for folder in {p.parent for p in PKG.rglob("*.py")}:
        assert (folder / "__init__.py").exists(), folder

"""The shape of the package: a scheme is a module; roles, loop and report never name one."""

from __future__ import annotations

import ast
from pathlib import Path

from hmtl_mpi.schemes import REGISTRY, get
from hmtl_mpi.schemes.base import Scheme

PKG = Path(__file__).resolve().parent.parent / "hmtl_mpi"

# Where scheme names may appear in code: the schemes themselves; the argument parsing
# (choices, the 'both' alias, the plan CLI's default); the benchmarks, whose experiments
# are defined as comparisons of named schemes (the paper's figures: coded vs uncoded).
ALLOWED = {"schemes", "cli.py", "plan.py", "bench"}


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


def test_the_math_stays_free_of_mpi():
    pure = ["topology.py", "plan.py", "coding.py", "gradcode.py", "gd.py", "straggle.py",
            "mocha.py", "datasets.py", "learners.py", "checks.py", "report.py"]
    for name in pure + [f"schemes/{p.name}" for p in (PKG / "schemes").glob("*.py")]:
        tree = ast.parse((PKG / name).read_text())
        imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert not any("mpi4py" in m for m in imported), name

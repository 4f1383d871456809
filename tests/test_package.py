"""The package as users get it: the wheel holds every module and declares its dependencies, the
rooms import only downwards (no circle), and the command line lists its subcommands."""

import ast
import email
import os
import shutil
import subprocess
import sys
import zipfile

import pytest
from helpers import REPO

PACKAGE = "crossvit_keras"
# The rooms, lowest first: a module may import its own room and the rooms before it, never after.
ROOMS = [
    ("base", ("version", "logs", "atomic", "configs", "transforms", "layers")),
    ("model", ("model", "branches", "ablations", "tuning")),
    ("data", ("data",)),
    ("weights", ("weights",)),
    ("models", ("models",)),
    ("factory", ("factory",)),
    ("export", ("export", "inference", "visualize")),
    ("training", ("training",)),
    ("cli", ("cli", "__main__", "__init__")),
]


def tracked(prefix):
    result = subprocess.run(["git", "ls-files", prefix], cwd=REPO, capture_output=True, text=True)
    if result.returncode:
        pytest.skip("not a git checkout")
    return result.stdout.split()


def test_wheel_holds_every_module_and_declares_dependencies(tmp_path):
    source = tmp_path / "source"
    for path in tracked("."):  # a clean checkout: tracked files only
        if os.path.isfile(os.path.join(REPO, path)):
            os.makedirs(source / os.path.dirname(path), exist_ok=True)
            shutil.copy(os.path.join(REPO, path), source / path)
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", "dist", "."]
    result = subprocess.run(command, cwd=source, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    (wheel,) = (source / "dist").glob("crossvit_keras-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        info = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = email.message_from_bytes(archive.read(info))
        entry_points = archive.read(info.replace("METADATA", "entry_points.txt")).decode()
    modules = [p for p in tracked(PACKAGE) if p.endswith(".py")]
    assert len(modules) > 40
    assert [m for m in modules if m not in names] == []
    assert not [n for n in names if n.startswith(("benchmarks/", "tests/", "recipes/", "tools/"))]
    requires = " ".join(metadata.get_all("Requires-Dist"))
    for dependency in ("tensorflow", "keras", "keras-hub", "tensorflow-datasets", "huggingface-hub"):
        assert dependency in requires
    assert "safetensors" in requires
    assert {"deploy", "dev"} <= set(metadata.get_all("Provides-Extra"))
    assert 'extra == "deploy"' in requires and "onnxruntime" in requires
    assert "crossvit-keras = crossvit_keras.cli:console_script" in entry_points
    from crossvit_keras.version import __version__

    assert metadata["Version"] == __version__


def _imports(path, module):
    """The crossvit_keras modules `path` imports, anywhere in it (function-level imports included)."""
    found = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith(PACKAGE)}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(PACKAGE):
            found |= {f"{node.module}.{alias.name}" for alias in node.names} | {node.module}
    return {name for name in found if name != module}


def _room(module):
    parts = module.split(".")
    if len(parts) == 1:
        return len(ROOMS) - 1  # the package's __init__: the facade
    for level, (_, names) in enumerate(ROOMS):
        if parts[1] in names:
            return level
    raise AssertionError(f"{module} is in no room: add it to ROOMS")


def _graph():
    graph = {}
    for path in tracked(PACKAGE):
        if path.endswith(".py"):
            module = path[:-3].replace("/", ".").removesuffix(".__init__")
            graph[module] = {name for name in _imports(os.path.join(REPO, path), module)}
    # `from crossvit_keras.data import augment` names a module: keep the longest existing prefix
    for module, names in graph.items():
        graph[module] = {
            max((m for m in graph if n == m or n.startswith(m + ".")), key=len)
            for n in names
            if any(n == m or n.startswith(m + ".") for m in graph)
        }
    return graph


def test_rooms_import_only_downwards():
    upward = [
        f"{module} -> {name}"
        for module, names in _graph().items()
        for name in names
        if _room(name) > _room(module) and name != PACKAGE
    ]
    assert upward == []


def test_no_import_circle():
    graph = {m: {n for n in names if n != PACKAGE and not m.startswith(n + ".")} for m, names in _graph().items()}
    seen, stack, circles = set(), [], []

    def visit(module):
        if module in stack:
            circles.append(stack[stack.index(module) :] + [module])
            return
        if module in seen:
            return
        seen.add(module)
        stack.append(module)
        for name in sorted(graph.get(module, ())):
            visit(name)
        stack.pop()

    for module in sorted(graph):
        visit(module)
    assert circles == []


def cli(*args):
    env = {**os.environ, "PYTHONPATH": REPO}
    return subprocess.run([sys.executable, "-m", PACKAGE, *args], cwd=REPO, env=env, capture_output=True, text=True)


def test_command_line_lists_its_subcommands():
    result = cli("--help")
    assert result.returncode == 0, result.stderr
    for name in ("train", "eval", "convert", "export", "predict", "visualize", "prepare", "data-service"):
        assert f"  {name} " in result.stdout
    result = cli("export", "--help")
    assert result.returncode == 0 and "--format" in result.stdout and "--checkpoint" in result.stdout
    result = cli("nonsense")
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1].startswith("error: unknown subcommand")

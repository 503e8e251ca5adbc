"""Guard: the programs nodeops runs on a node are real, stdlib-only files in nodeops/hostside/.

Each one must compile and keep to the standard library when run in an isolated
interpreter (`python3 -I`, from an empty directory), parse with the grammar of an
old python3 (a node's may be older than ours), and no program may be hidden in
a string constant (`*_PY = r\"\"\"`) in nodeops/ again.
"""

import ast
import json
import pathlib
import re
import subprocess
import sys

import pytest

from nodeops import hostside

NODEOPS = pathlib.Path(hostside.HERE).parent
# The oldest python3 we allow the programs' syntax to need (Ubuntu 20.04's; Debian 11 has 3.9).
OLDEST = (3, 8)


def imported_modules(text):
    """The top-level names of every module the program imports."""
    found = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            found.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "a host program has no package to import relatively from"
            found.add(node.module.split(".")[0])
    return found


def test_there_are_programs():
    assert {"release_start", "release_stop", "put_files", "frontdoor_push", "setup_health"} <= set(hostside.names())


@pytest.mark.parametrize("name", hostside.names())
def test_program_is_stdlib_only_and_old_python_syntax(name):
    text = hostside.source(name)
    ast.parse(text, feature_version=OLDEST)
    assert "#include" not in text
    outside = imported_modules(text) - set(sys.stdlib_module_names)
    assert not outside, f"{name} imports {sorted(outside)}, not the standard library"


@pytest.mark.parametrize("name", hostside.names())
def test_program_compiles_and_imports_resolve_isolated(name, tmp_path):
    """Under -I from an empty directory: the program compiles and each module it imports is found."""
    check = (
        "import importlib.util, json, sys\n"
        "text = sys.stdin.read()\n"
        "compile(text, sys.argv[1], 'exec')\n"
        "missing = [m for m in json.loads(sys.argv[2]) if importlib.util.find_spec(m) is None]\n"
        "print(json.dumps([sys.path, missing]))\n"
    )
    text = hostside.source(name)
    r = subprocess.run([sys.executable, "-I", "-c", check, name, json.dumps(sorted(imported_modules(text)))],
                       input=text, capture_output=True, text=True, cwd=tmp_path, check=True)
    path, missing = json.loads(r.stdout)
    assert not missing
    assert str(NODEOPS.parent) not in path and "" not in path


def test_no_program_strings_left_in_nodeops():
    pattern = re.compile(r"^\s*\w+_PY\s*=\s*[rRbBfF]*(\"\"\"|''')", re.MULTILINE)
    hits = [str(p.relative_to(NODEOPS)) for p in NODEOPS.rglob("*.py") if pattern.search(p.read_text())]
    assert hits == []


def test_label_shows_the_program_not_its_source():
    argv = ["/usr/bin/python3", "-I", "-c", hostside.source("release_stop"), "/run/s.sock", "hello-1", "/c.conf"]
    assert hostside.label(argv) == ["node:", "release.stop", "/run/s.sock", "hello-1", "/c.conf"]
    assert hostside.label(["cat", "/proc/uptime"]) == ["cat", "/proc/uptime"]

"""The shape of the code, read from its imports (ast; nothing is imported or run).

Pure functions over a source tree: tests/test_shape.py checks the rules of
docs/architecture.md with them, and bench/shape_counts.py prints the counts
of a tree (any checkout: `python bench/shape_counts.py /tmp/before`).

Only our own packages count (PACKAGES); an import's target is the module of
ours it names: `from jobs import data` is jobs.data when jobs/data.py exists,
`from jobs.flows import FLOWS` is jobs.flows. A package's parent is not an
edge of its own (importing jobs.engine.events runs jobs/engine/__init__.py,
which imports nothing), so a package's __init__ importing its children is not
a circle.
"""

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

PACKAGES = ("toppcloud_site", "jobs", "nodeops")
# Where dispatch.submit may be looked for (the benches submit jobs too; tests may call it directly).
SUBMIT_SCOPE = PACKAGES + ("bench",)
# Where it lives: today's place and the one before the engine moved (for counts of an older tree).
DISPATCH_MODULES = ("jobs.engine.dispatch", "jobs.dispatch")


@dataclass(frozen=True)
class Import:
    path: str  # the importing file, relative to the tree
    line: int
    module: str  # the importing module
    target: str  # the module imported (dotted; ours or not)
    text: str  # the statement as written
    in_function: bool  # inside a def or lambda: runs when called, not when the module is imported
    type_only: bool  # under `if TYPE_CHECKING:`, never run

    def where(self):
        return f"{self.path}:{self.line}: {self.text}"


def module_name(rel):
    """jobs/engine/dispatch.py -> jobs.engine.dispatch; jobs/flows/__init__.py -> jobs.flows."""
    parts = list(Path(rel).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_files(root, packages=PACKAGES, migrations=True):
    """{module: relative path} of every .py file of the packages under root."""
    root = Path(root)
    found = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            rel = path.relative_to(root)
            if "__pycache__" in rel.parts or (not migrations and "migrations" in rel.parts):
                continue
            found[module_name(rel)] = rel.as_posix()
    return found


def _parse(root, rel):
    source = (Path(root) / rel).read_text()
    return source, ast.parse(source, filename=rel)


def _is_type_checking(test):
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(node, in_function=False, type_only=False):
    """Every import statement below node, with whether it is in a function / type-only."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child, in_function, type_only
        elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            yield from _import_nodes(child, True, type_only)
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            for stmt in child.body:
                yield from _import_nodes(ast.Module(body=[stmt], type_ignores=[]), in_function, True)
            for stmt in child.orelse:
                yield from _import_nodes(ast.Module(body=[stmt], type_ignores=[]), in_function, type_only)
        else:
            yield from _import_nodes(child, in_function, type_only)


def _base(module, rel, node):
    """The module a `from ... import` names, relative imports resolved."""
    if not node.level:
        return node.module or ""
    package = module.split(".") if rel.endswith("__init__.py") else module.split(".")[:-1]
    package = package[:len(package) - (node.level - 1)]
    return ".".join(package + ([node.module] if node.module else []))


def _statement(source, node):
    return " ".join((ast.get_source_segment(source, node) or "").split())


def file_imports(root, module, rel, known):
    """The imports of one file: one Import per module named (known: every module of the tree)."""
    source, tree = _parse(root, rel)
    found = []
    for node, in_function, type_only in _import_nodes(tree):
        text = _statement(source, node)
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = _base(module, rel, node)
            targets = []
            for alias in node.names:
                target = f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                if target not in targets:
                    targets.append(target)
        found += [Import(rel, node.lineno, module, t, text, in_function, type_only) for t in targets]
    return found


def all_imports(root, packages=PACKAGES):
    files = source_files(root, packages)
    known = set(source_files(root, SUBMIT_SCOPE))
    return [imp for module, rel in files.items() for imp in file_imports(root, module, rel, known)]


def is_under(name, prefix):
    return name == prefix or name.startswith(prefix + ".")


def ours(name, packages=PACKAGES):
    return any(is_under(name, p) for p in packages)


# --- the circle ---------------------------------------------------------------------------------

def import_graph(imports):
    """{module: {imported module of ours: first Import naming it}}, imports run when the module loads."""
    graph = {}
    for imp in imports:
        graph.setdefault(imp.module, {})
        if imp.in_function or imp.type_only or not ours(imp.target) or imp.target == imp.module:
            continue
        graph[imp.module].setdefault(imp.target, imp)
    return graph


def cycles(graph):
    """The strongly connected components with more than one module, each a sorted list (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
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
                found.append(sorted(component))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10 * len(graph) + 100))
    try:
        for v in sorted(graph):
            if v not in index:
                visit(v)
    finally:
        sys.setrecursionlimit(limit)
    return sorted(found)


# --- imports inside functions -------------------------------------------------------------------

def function_imports(root, packages=PACKAGES):
    """{module: [Import, ...]} of the import statements inside functions (migrations aside), one per statement."""
    files = source_files(root, packages, migrations=False)
    known = set(source_files(root, SUBMIT_SCOPE))
    found = {}
    for module, rel in files.items():
        seen = set()
        for imp in file_imports(root, module, rel, known):
            if imp.in_function and (imp.line, imp.text) not in seen:
                seen.add((imp.line, imp.text))
                found.setdefault(module, []).append(imp)
    return found


# --- calls of dispatch.submit -------------------------------------------------------------------

@dataclass(frozen=True)
class Call:
    path: str
    line: int
    module: str
    text: str

    def where(self):
        return f"{self.path}:{self.line}: {self.text}"


def _dispatch_names(module, rel, tree):
    """Names in the file bound to the dispatch module, and to its submit function."""
    modules, functions = set(), set()
    for node, _, _ in _import_nodes(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in DISPATCH_MODULES:
                    modules.add(alias.asname or alias.name)
            continue
        base = _base(module, rel, node)
        for alias in node.names:
            if f"{base}.{alias.name}" in DISPATCH_MODULES:
                modules.add(alias.asname or alias.name)
            elif base in DISPATCH_MODULES and alias.name == "submit":
                functions.add(alias.asname or alias.name)
    return modules, functions


def submit_calls(root, packages=SUBMIT_SCOPE):
    """Every call of dispatch.submit: `submit(...)` imported from it, or `<dispatch>.submit(...)`."""
    found = []
    for module, rel in source_files(root, packages).items():
        source, tree = _parse(root, rel)
        modules, functions = _dispatch_names(module, rel, tree)
        if module in DISPATCH_MODULES:
            functions.add("submit")
        if not (modules or functions):
            continue
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            f = node.func
            if (isinstance(f, ast.Name) and f.id in functions) or (
                    isinstance(f, ast.Attribute) and f.attr == "submit" and ast.unparse(f.value) in modules):
                text = _statement(source, node).split("(")[0] + "(...)"
                found.append(Call(rel, node.lineno, module, text))
    return sorted(found, key=lambda c: (c.path, c.line))


# --- programs sent to hosts as text -------------------------------------------------------------

def host_program_strings(root, packages=("nodeops",)):
    """[(path, line, name, lines)] of the module-level `NAME_PY = r\"\"\"...` constants: Python programs kept in strings."""
    found = []
    for module, rel in source_files(root, packages).items():
        _, tree = _parse(root, rel)
        for node in tree.body:
            if not isinstance(node, ast.Assign):
                continue
            # The text itself, or text joined to other parts (`r"""...""" + _COMMON`).
            text = [c.value for c in ast.walk(node.value) if isinstance(c, ast.Constant) and isinstance(c.value, str)]
            for target in node.targets:
                if text and isinstance(target, ast.Name) and target.id.endswith("_PY"):
                    found.append((rel, node.lineno, target.id, sum(t.count("\n") for t in text) + 1))
    return found


def _runs_program_text(previous):
    """Whether the argument before a "-c" is an interpreter's (python ... -I, sh) rather than a config flag's."""
    text = ast.unparse(previous).lower()
    return text in ("'-i'", "'sh'", "'bash'") or "python" in text


def dash_c_programs(root, packages=PACKAGES):
    """[(path, line, argv start)] of the argv lists that run program text with `python -c` or `sh -c`."""
    found = []
    for module, rel in source_files(root, packages).items():
        _, tree = _parse(root, rel)
        for node in ast.walk(tree):
            if not isinstance(node, (ast.List, ast.Tuple)):
                continue
            for i, element in enumerate(node.elts[1:], 1):
                if (isinstance(element, ast.Constant) and element.value == "-c"
                        and _runs_program_text(node.elts[i - 1]) and i + 1 < len(node.elts)):
                    found.append((rel, node.lineno, ast.unparse(ast.List(node.elts[:i + 2]))))
                    break
    return found


def counts(root):
    """The figures of issue 14's note, for one tree."""
    circle = cycles(import_graph(all_imports(root)))
    local = function_imports(root)
    return {
        "files in import circles": sum(len(c) for c in circle),
        "import circles": circle,
        "submit call sites": len(submit_calls(root)),
        "imports inside functions": sum(len(v) for v in local.values()),
        "of them importing modules of ours": sum(ours(i.target) for v in local.values() for i in v),
        "imports inside functions by package": {
            p: sum(len(v) for m, v in local.items() if is_under(m, p)) for p in PACKAGES},
        "host programs in strings (*_PY)": len(host_program_strings(root)),
        "lines of them": sum(n for *_, n in host_program_strings(root)),
        "-c programs (argv lists)": len(dash_c_programs(root)),
    }


# --- the rules (docs/architecture.md): each returns its problems, one line each, naming file, line and import ---

DOC = "docs/architecture.md"
# What the engine may not know: flows, steps (and the domain modules that are steps until they move), actions, records.
ENGINE_FORBIDDEN = ("jobs.flows", "jobs.steps", "jobs.actions", "jobs.data", "jobs.cron", "jobs.frontdoor",
                    "jobs.environment", "jobs.execution", "jobs.releases", "jobs.reconcile",
                    "toppcloud_site.records")
# Who may call dispatch.submit: the actions, and the engine itself (fan-out submits its children).
SUBMIT_ALLOWED = ("jobs.actions", "jobs.engine")


def _under_any(name, prefixes):
    return any(is_under(name, p) for p in prefixes)


def nodeops_imports_nothing_of_ours(root):
    return [f"{imp.where()}  -- nodeops imports {imp.target}: nodeops is plain Python and imports nothing of "
            f"toppcloud_site or jobs; pass what it needs as arguments ({DOC})"
            for imp in all_imports(root, ("nodeops",)) if _under_any(imp.target, ("jobs", "toppcloud_site"))]


def records_import_no_jobs(root):
    return [f"{imp.where()}  -- toppcloud_site.records imports {imp.target}: the records layer imports no jobs; "
            f"put the code that needs jobs on the jobs side (jobs/records_admin.py, jobs/actions.py) ({DOC})"
            for imp in all_imports(root, ("toppcloud_site",))
            if is_under(imp.module, "toppcloud_site.records") and is_under(imp.target, "jobs")]


def engine_knows_no_domain(root):
    return [f"{imp.where()}  -- jobs.engine imports {imp.target}: the engine imports no flow, step, action or "
            f"record model; name a flow in jobs/engine/registry.py, or move the code to jobs/steps/ ({DOC})"
            for imp in all_imports(root, ("jobs",))
            if is_under(imp.module, "jobs.engine") and _under_any(imp.target, ENGINE_FORBIDDEN)]


def flows_import_no_flow(root):
    return [f"{imp.where()}  -- {imp.module} imports {imp.target}: no flow imports another; what flows share "
            f"goes in jobs/steps/ ({DOC})"
            for imp in all_imports(root, ("jobs",))
            if is_under(imp.module, "jobs.flows") and imp.module != "jobs.flows"
            and is_under(imp.target, "jobs.flows") and imp.target not in ("jobs.flows", imp.module)]


def steps_import_no_flow(root):
    return [f"{imp.where()}  -- {imp.module} imports {imp.target}: a step never imports a flow (flows are "
            f"made of steps, not the other way) ({DOC})"
            for imp in all_imports(root, ("jobs",))
            if is_under(imp.module, "jobs.steps") and is_under(imp.target, "jobs.flows")]


def submit_only_from_actions(root):
    return [f"{call.where()}  -- {call.module} calls dispatch.submit: jobs/actions.py is its only caller; "
            f"call (or add) the job kind's function there ({DOC})"
            for call in submit_calls(root) if not _under_any(call.module, SUBMIT_ALLOWED)]


def no_import_circle(root):
    graph = import_graph(all_imports(root))
    problems = []
    for circle in cycles(graph):
        members = set(circle)
        edges = [imp.where() for m in circle for t, imp in sorted(graph[m].items()) if t in members]
        problems.append(f"import circle of {len(circle)} modules ({' '.join(circle)}): its imports at module level: "
                        + "; ".join(edges)
                        + f"  -- point the arrows one way: move the shared part down a layer, or let the registry "
                          f"name it by dotted path ({DOC})")
    return problems


def function_imports_grown(root, baseline, where="FUNCTION_IMPORTS_BASELINE in tests/test_shape.py"):
    """Modules with more imports inside functions than baseline allows (a module without an entry: none)."""
    problems = []
    for module, imports in sorted(function_imports(root).items()):
        allowed = baseline.get(module, 0)
        if len(imports) > allowed:
            problems.append(
                f"{module} has {len(imports)} imports inside functions, {allowed} allowed: "
                + "; ".join(imp.where() for imp in imports)
                + f"  -- import at the top of the module; if one must stay in its function (an import circle "
                  f"Django's app loading needs, an optional dependency), raise {module!r} to {len(imports)} "
                  f"in {where} and say why in the commit")
    return problems


def function_imports_below(root, baseline, where="FUNCTION_IMPORTS_BASELINE in tests/test_shape.py"):
    """Entries of baseline above today's count: lowered, so the count cannot grow back."""
    counts = {m: len(v) for m, v in function_imports(root).items()}
    return [f"{module} has {counts.get(module, 0)} imports inside functions, baseline {allowed}: lower {module!r} to "
            f"{counts.get(module, 0)} in {where} (remove it at 0); `python tests/test_shape.py --baseline` prints them all"
            for module, allowed in sorted(baseline.items()) if counts.get(module, 0) < allowed]


RULES = {
    "nodeops_imports_nothing_of_ours": nodeops_imports_nothing_of_ours,
    "records_import_no_jobs": records_import_no_jobs,
    "engine_knows_no_domain": engine_knows_no_domain,
    "flows_import_no_flow": flows_import_no_flow,
    "steps_import_no_flow": steps_import_no_flow,
    "submit_only_from_actions": submit_only_from_actions,
    "no_import_circle": no_import_circle,
}

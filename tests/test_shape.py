"""The shape of the code keeps to docs/architecture.md, read from the source's imports (tests/shape.py).

Two halves: the rules on this tree (test_it_keeps_*), and each rule fed a small
tree that breaks it (test_it_catches_*), so a rule that could not fail shows.

    python tests/test_shape.py --baseline    # today's imports inside functions, as FUNCTION_IMPORTS_BASELINE
"""

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
from tests import shape  # noqa: E402

# Rules this tree still breaks until the rest of issue 14 is merged (the branch that mends each in brackets).
# Their tests are expected to fail (xfail, strict): once a rule holds, its test fails as XPASS until its
# line here is removed. Empty after the merge.
PENDING = {}

# Imports inside functions per module (migrations aside), at most: the count may fall, never grow.
# A module not listed may have none. `python tests/test_shape.py --baseline` prints today's figures.
FUNCTION_IMPORTS_BASELINE = {
    "jobs.admin": 3,
    "jobs.apps": 1,
    "jobs.beat": 2,
    "jobs.engine.reducer": 1,
    "jobs.flows.tasks": 2,
    "jobs.management.commands.jobs": 1,
    "jobs.models": 1,
    "jobs.steps.data": 4,
    "jobs.steps.frontdoor": 1,
    "nodeops.hostside.node_exec": 1,
    "nodeops.hostside.node_users": 4,
    "nodeops.hostside.node_data": 3,  # pwd, fcntl: modules of the node's Python, imported where used
    "nodeops.publish": 3,  # boto3: only a group that publishes static files to S3 needs it
    "toppcloud_site.logchain": 1,
    "toppcloud_site.records.admin": 4,
    "toppcloud_site.records.apps": 3,
    "toppcloud_site.records.audit": 2,
    "toppcloud_site.records.tls": 2,
}


def _rule_param(name):
    if name not in PENDING:
        return name
    reason = f"until {PENDING[name]} is merged; then remove {name!r} from PENDING in tests/test_shape.py"
    return pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=reason))


# --- this tree ----------------------------------------------------------------------------------

@pytest.mark.parametrize("rule", [_rule_param(name) for name in shape.RULES])
def test_it_keeps_the_rule(rule):
    problems = shape.RULES[rule](ROOT)
    assert not problems, f"{rule}: {len(problems)} problem(s)\n" + "\n".join(problems)


def test_it_keeps_imports_inside_functions_from_growing():
    problems = shape.function_imports_grown(ROOT, FUNCTION_IMPORTS_BASELINE)
    assert not problems, "\n".join(problems)


def test_it_lowers_the_baseline_when_imports_inside_functions_go():
    problems = shape.function_imports_below(ROOT, FUNCTION_IMPORTS_BASELINE)
    assert not problems, "\n".join(problems)


# --- each rule has teeth: a small tree that breaks it --------------------------------------------

def tree(tmp_path, files):
    """A source tree of our three packages, every package with its __init__.py, plus files {path: source}."""
    for package in ("jobs", "jobs/engine", "jobs/flows", "jobs/steps", "nodeops", "toppcloud_site",
                    "toppcloud_site/records", "bench"):
        (tmp_path / package).mkdir(parents=True, exist_ok=True)
        (tmp_path / package / "__init__.py").touch()
    for path, source in files.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(source)
    return tmp_path


CLEAN = {
    "jobs/models.py": "from django.db import models\n",
    "jobs/engine/dispatch.py": "from jobs.models import Job\n\ndef submit(kind):\n    return submit_many([kind])\n",
    "jobs/engine/fan_out.py": "from jobs.engine import dispatch\n\ndef children():\n    dispatch.submit('x')\n",
    "jobs/engine/registry.py": "import importlib\n\nFLOWS = {'deploy': 'jobs.flows.deploy:deploy'}\n",
    "jobs/steps/locks.py": "from toppcloud_site.records.models import App\n",
    "jobs/flows/deploy.py": "from jobs.steps import locks\nfrom nodeops import release\n",
    "jobs/actions.py": "from jobs.engine.dispatch import submit\n\ndef deploy(app, *, actor):\n    return submit('deploy')\n",
    "jobs/admin.py": "from jobs import actions\n\ndef deploy(request):\n    actions.deploy('hello', actor=request.user)\n",
    "nodeops/release.py": "import json\n\nfrom nodeops import transport\n",
    "nodeops/transport.py": "import subprocess\n",
    "toppcloud_site/urls.py": "from jobs import api\n",
    "toppcloud_site/records/models.py": "from django.db import models\n",
    "jobs/api.py": "from concurrent.futures import ThreadPoolExecutor\n\ndef go(pool):\n    pool.submit(print)\n",
    "tests/test_x.py": "from jobs.engine import dispatch\n\ndispatch.submit('noop')\n",
}


def test_it_finds_nothing_wrong_in_a_tree_that_keeps_the_rules(tmp_path):
    root = tree(tmp_path, CLEAN)
    assert {name: rule(root) for name, rule in shape.RULES.items()} == {name: [] for name in shape.RULES}
    assert shape.function_imports_grown(root, {}) == []


def only(problems, *needles):
    assert len(problems) == 1, problems
    for needle in needles:
        assert needle in problems[0], problems[0]
    return problems[0]


def test_it_catches_nodeops_importing_ours(tmp_path):
    root = tree(tmp_path, {**CLEAN, "nodeops/ping.py": "import os\n\ndef ping():\n    from jobs import models\n"})
    only(shape.nodeops_imports_nothing_of_ours(root), "nodeops/ping.py:4: from jobs import models")
    root = tree(tmp_path, {**CLEAN, "nodeops/ping.py": "import toppcloud_site.records.models\n"})
    only(shape.nodeops_imports_nothing_of_ours(root), "nodeops/ping.py:1: import toppcloud_site.records.models")


def test_it_catches_records_importing_jobs(tmp_path):
    root = tree(tmp_path, {**CLEAN, "toppcloud_site/records/admin.py":
                           "from django.contrib import admin\n\n\ndef deploy():\n    from jobs.engine.states import ActorKind\n"})
    only(shape.records_import_no_jobs(root), "toppcloud_site/records/admin.py:5: from jobs.engine.states import ActorKind")


def test_it_catches_the_engine_importing_a_step_a_flow_or_a_record(tmp_path):
    for source, named in [
        ("from jobs import data\n", "from jobs import data"),
        ("from jobs.flows import FLOWS\n", "from jobs.flows import FLOWS"),
        ("import jobs.flows.deploy\n", "import jobs.flows.deploy"),
        ("from ..steps import locks\n", "from ..steps import locks"),
        ("from jobs import actions\n", "from jobs import actions"),
        ("def f():\n    from toppcloud_site.records.models import App\n", "from toppcloud_site.records.models import App"),
    ]:
        root = tree(tmp_path, {**CLEAN, "jobs/data.py": "", "jobs/engine/runner.py": source})
        only(shape.engine_knows_no_domain(root), f"jobs/engine/runner.py:{source.count(chr(10))}: {named}")


def test_it_catches_a_flow_importing_another(tmp_path):
    for source, named in [
        ("from jobs.flows.deploy import take_app_lock\n", "from jobs.flows.deploy import take_app_lock"),
        ("from jobs.flows import deploy\n", "from jobs.flows import deploy"),
        ("from . import deploy\n", "from . import deploy"),
    ]:
        root = tree(tmp_path, {**CLEAN, "jobs/flows/data.py": source})
        only(shape.flows_import_no_flow(root), f"jobs/flows/data.py:1: {named}", "jobs.flows.deploy")
    # The package's own __init__ may name its flows.
    root = tree(tmp_path, {**CLEAN, "jobs/flows/data.py": "", "jobs/flows/__init__.py": "from jobs.flows import data, deploy\n"})
    assert shape.flows_import_no_flow(root) == []


def test_it_catches_a_step_importing_a_flow(tmp_path):
    root = tree(tmp_path, {**CLEAN, "jobs/steps/locks.py": "def f():\n    from jobs.flows.deploy import deploy\n"})
    only(shape.steps_import_no_flow(root), "jobs/steps/locks.py:2: from jobs.flows.deploy import deploy")


def test_it_catches_submit_called_outside_the_actions(tmp_path):
    for path, source, named in [
        ("jobs/api.py", "from jobs.engine import dispatch\n\ndispatch.submit('task')\n", "jobs/api.py:3: dispatch.submit"),
        ("jobs/tasks.py", "from jobs.engine.dispatch import submit as go\n\n\ndef beat():\n    go('backup')\n",
         "jobs/tasks.py:5: go"),
        ("jobs/cli.py", "import jobs.engine.dispatch\n\njobs.engine.dispatch.submit('run')\n",
         "jobs/cli.py:3: jobs.engine.dispatch.submit"),
        ("toppcloud_site/records/admin.py", "def act():\n    from jobs.engine import dispatch as d\n    d.submit('x')\n",
         "toppcloud_site/records/admin.py:3: d.submit"),
        ("bench/deploy.py", "from jobs.engine import dispatch\n\ndispatch.submit('deploy')\n", "bench/deploy.py:3"),
    ]:
        root = tree(tmp_path, {**CLEAN, path: source})
        only(shape.submit_only_from_actions(root), named, "jobs/actions.py")
        (tmp_path / path).unlink()


def test_it_catches_an_import_circle(tmp_path):
    root = tree(tmp_path, {**CLEAN, "jobs/engine/runner.py": "from jobs.engine import dispatch\n",
                           "jobs/engine/dispatch.py": "import os\nfrom jobs.engine.runner import run\n"})
    only(shape.no_import_circle(root), "circle of 2 modules (jobs.engine.dispatch jobs.engine.runner)",
         "jobs/engine/dispatch.py:2: from jobs.engine.runner import run",
         "jobs/engine/runner.py:1: from jobs.engine import dispatch")
    # An import that runs only when called, or only for type checkers, makes no circle.
    root = tree(tmp_path, {**CLEAN, "jobs/engine/runner.py": "def f():\n    from jobs.engine import dispatch\n",
                           "jobs/engine/dispatch.py": "from typing import TYPE_CHECKING\nfrom jobs.engine import runner\n"
                                                      "if TYPE_CHECKING:\n    from jobs.engine import fan_out\n",
                           "jobs/engine/fan_out.py": "from jobs.engine import dispatch\n"})
    assert shape.no_import_circle(root) == []


def test_it_catches_imports_inside_functions_growing(tmp_path):
    root = tree(tmp_path, {**CLEAN, "jobs/tasks.py": "def a():\n    import json\n\n\ndef b():\n    from jobs import beat\n",
                           "jobs/migrations/0002_x.py": "def forwards(apps, schema_editor):\n    import json\n"})
    only(shape.function_imports_grown(root, {"jobs.tasks": 1}),
         "jobs.tasks has 2 imports inside functions, 1 allowed", "jobs/tasks.py:2: import json",
         "jobs/tasks.py:6: from jobs import beat", "raise 'jobs.tasks' to 2")
    assert shape.function_imports_grown(root, {"jobs.tasks": 2}) == []
    # A module without an entry may have none.
    only(shape.function_imports_grown(root, {}), "jobs.tasks has 2 imports inside functions, 0 allowed")
    # A count that fell lowers its entry; a module that has none left loses it.
    only(shape.function_imports_below(root, {"jobs.tasks": 3}), "lower 'jobs.tasks' to 2")
    only(shape.function_imports_below(root, {"jobs.tasks": 2, "jobs.data": 1}), "lower 'jobs.data' to 0")


def print_baseline():
    counts = {module: len(imports) for module, imports in sorted(shape.function_imports(ROOT).items())}
    print("FUNCTION_IMPORTS_BASELINE = {")
    for module, count in counts.items():
        was = FUNCTION_IMPORTS_BASELINE.get(module)
        note = "" if was == count else f"  # was {was}" if was is not None else "  # new"
        print(f"    {module!r}: {count},{note}")
    print("}")
    gone = sorted(set(FUNCTION_IMPORTS_BASELINE) - set(counts))
    if gone:
        print(f"# gone (none left): {', '.join(gone)}")
    print(f"# total {sum(counts.values())}, was {sum(FUNCTION_IMPORTS_BASELINE.values())}")


if __name__ == "__main__":
    if sys.argv[1:] != ["--baseline"]:
        sys.exit(f"usage: python {sys.argv[0]} --baseline   (the tests: python -m pytest {sys.argv[0]})")
    print_baseline()

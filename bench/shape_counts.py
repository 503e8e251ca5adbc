#!/usr/bin/env python3
"""The shape figures of a source tree (issue 14's note): files in import circles,
call sites of dispatch.submit, imports inside functions, host programs in strings.

    python bench/shape_counts.py [TREE ...] [--detail]

TREE is a checkout (default: this one), e.g. a `git worktree add /tmp/before 8c7ff04`.
Nothing of the tree is imported or run: tests/shape.py reads its source with ast.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests import shape  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trees", nargs="*", default=[str(Path(__file__).resolve().parent.parent)])
    parser.add_argument("--detail", action="store_true", help="list every circle, call site and import")
    args = parser.parse_args()
    for tree in args.trees:
        print(f"== {tree}")
        for name, value in shape.counts(tree).items():
            if name == "import circles":
                for circle in value:
                    print(f"  circle of {len(circle)}: {' '.join(circle)}")
            else:
                print(f"  {name}: {value}")
        if args.detail:
            print("  -- submit call sites")
            for call in shape.submit_calls(tree):
                print(f"    {call.where()}")
            print("  -- imports inside functions")
            for module, imports in sorted(shape.function_imports(tree).items()):
                for imp in imports:
                    print(f"    {imp.where()}")
            print("  -- host programs in strings")
            for path, line, name, lines in shape.host_program_strings(tree):
                print(f"    {path}:{line}: {name} ({lines} lines)")
            print("  -- -c programs")
            for path, line, argv in shape.dash_c_programs(tree):
                print(f"    {path}:{line}: {argv}")


if __name__ == "__main__":
    main()

"""The programs nodeops runs on a node, one real file each, sent by name.

Each file here is a stdlib-only Python program (tests/test_hostside.py keeps
it so) that the control plane sends with `python3 -I -c` and its arguments:

    [PYTHON, "-I", "-c", hostside.source("release_stop"), sock, name, conf]

A line `#include NAME` in a program is replaced by the file NAME.py here
(supervisor_rpc: supervisord's XML-RPC client, shared by several programs).
"""

import functools
import os
import re

HERE = os.path.dirname(os.path.abspath(__file__))
_INCLUDE = re.compile(r"^#include (\w+)$", re.MULTILINE)


def path(name):
    """The file of the program NAME."""
    return os.path.join(HERE, name + ".py")


@functools.lru_cache(maxsize=None)
def source(name):
    """The text of the program NAME, its includes expanded, as it is sent to a node."""
    with open(path(name), encoding="utf-8") as f:
        text = f.read()
    return _INCLUDE.sub(lambda m: source(m.group(1)).rstrip("\n"), text)


def names():
    """Every program here, by name (the files but __init__)."""
    return sorted(f[:-3] for f in os.listdir(HERE) if f.endswith(".py") and f != "__init__.py")


def label(argv):
    """argv as events and errors show it: a program here as `node: NAME ARGS`, its source left out.

    [python3, -I, -c, source("release_stop"), sock, name, conf] -> [node:, release.stop, sock, name, conf];
    any other argv is returned as it is. (Stdin, where secrets travel, is never part of argv.)"""
    argv = list(argv)
    if len(argv) >= 4 and argv[1:3] == ["-I", "-c"]:
        name = _by_source().get(argv[3])
        if name:
            return ["node:", name.replace("_", ".", 1), *argv[4:]]
    return argv


@functools.lru_cache(maxsize=None)
def _by_source():
    return {source(n): n for n in names()}

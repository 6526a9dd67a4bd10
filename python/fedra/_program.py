"""The `fedra` command of an environment the wheel is installed in: runs the program shipped inside
the package (python/setup.py.in), with every argument."""
import os
import sys


def path():
    """The packaged program, or None in a build tree (where build/fedra is the program)."""
    candidate = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fedra")
    return candidate if os.path.isfile(candidate) and os.access(candidate, os.X_OK) else None


def main():
    program = path()
    if program is None:
        sys.exit("fedra: this package has no program inside (it is a build tree's): run build/fedra")
    os.execv(program, [program] + sys.argv[1:])

"""``python -m subspace_fsl.bench <name> [options]``: dispatch to ``subspace_fsl.bench.<name>``."""

from __future__ import annotations

import importlib
import pkgutil
import sys

import subspace_fsl.bench as bench_package


def available() -> list[str]:
    modules = pkgutil.iter_modules(bench_package.__path__)
    return sorted(m.name for m in modules if not m.name.startswith("_"))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    names = available()
    if not argv or argv[0] in {"-h", "--help"}:
        print(f"usage: python -m subspace_fsl.bench {{{','.join(names)}}} [options]")
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in names:
        print(f"unknown benchmark {name!r}; choose one of: {', '.join(names)}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"subspace_fsl.bench.{name}")
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())

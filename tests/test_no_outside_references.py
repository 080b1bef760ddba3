"""Comments and docstrings point only at what the repository holds: the design notes the project grew from
are not in it, so a reference to them is a dead end for a reader (docs/architecture.md and
docs/oral_scoring_spec.md are the in-repo homes of what the code depends on)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# assembled so this file does not match itself
OUTSIDE = re.compile("|".join(["PEER" + r"S\b", "DESI" + r"GN\.md", "ORAL_" + "SCORING"]))


def test_no_comment_points_outside_the_repository():
    hits = []
    for top in ("glmtune", "tests"):
        for path in sorted((ROOT / top).rglob("*")):
            if path.suffix not in (".py", ".md", ".yaml", ".yml", ".txt", ".jinja", ".toml") or not path.is_file():
                continue
            for no, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
                if OUTSIDE.search(line):
                    hits.append(f"{path.relative_to(ROOT)}:{no}: {line.strip()[:120]}")
    assert not hits, "references to files outside the repository:\n" + "\n".join(hits)


def test_in_repo_docs_the_code_points_at_exist():
    for doc in ("docs/architecture.md", "docs/oral_scoring_spec.md"):
        assert (ROOT / doc).is_file(), doc

"""References to the project's documents resolve: the file exists, and a quoted section is one of its headings."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# A path under docs/, optionally followed by a comma and a quoted section title.
REFERENCE = re.compile(r'(docs/[\w-]+\.md)(?:, (?:\\)?"([^"\\]+)(?:\\)?")?')


def tracked_text_files() -> list[Path]:
    listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    files = [ROOT / name for name in listed.splitlines()]
    return [f for f in files if f.suffix in {".py", ".yml", ".yaml", ".j2", ".md", ".sh", ".js", ""} and f.is_file()]


def headings(document: Path) -> set[str]:
    return {line.lstrip("#").strip() for line in document.read_text().splitlines() if line.startswith("#")}


def test_every_reference_to_a_document_names_a_file_and_a_section_that_exist():
    broken, seen = [], 0
    for path in tracked_text_files():
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        for match in REFERENCE.finditer(text):
            seen += 1
            document, section = ROOT / match.group(1), match.group(2)
            if not document.is_file():
                broken.append(f"{path.relative_to(ROOT)}: {match.group(1)} does not exist")
            elif section and section not in headings(document):
                broken.append(f"{path.relative_to(ROOT)}: {match.group(1)} has no section {section!r}")
    assert seen >= 5  # the pattern still finds the references it was written for
    assert not broken, "\n".join(broken)


def test_no_file_cites_a_design_document_outside_the_repository():
    citing = [
        str(path.relative_to(ROOT))
        for path in tracked_text_files()
        if path.name != "test_docs.py" and "DESIGN.md" in path.read_text(errors="replace")
    ]
    assert citing == []

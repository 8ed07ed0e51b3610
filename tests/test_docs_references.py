"""Every reference in the project points inside the repository: no file, note or issue number
that a user of the repository does not have, every relative link of the README and docs/ names a
file that exists, and every anchor into a page (a link, or a ``docs/X.md#anchor`` in the code)
names one of its headings."""
import os
import re
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHECKED = (".py", ".md", ".yaml", ".yml", ".json", ".sh", ".cfg", ".toml", ".txt", ".in")
# notes outside the repository, and issue numbers of its tracker (another project's issue is
# named by its address: https://github.com/OWNER/NAME/issues/N)
OUTSIDE = re.compile(r"METHOD|DESIGN\.md|shared/|#[0-9]+\b|issue [0-9]")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
CODE_ANCHOR = re.compile(r"docs/([\w-]+\.md)(?:#([\w-]+))?")


def project_files():
    """Tracked files and new ones git does not ignore, this test excepted (it spells the patterns)."""
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout.split()
    return sorted(f for f in set(out) if f.endswith(CHECKED) and f != "tests/test_docs_references.py"
                  and os.path.isfile(os.path.join(REPO, f)))


def read(path):
    with open(os.path.join(REPO, path), encoding="utf-8", errors="replace") as f:
        return f.read()


def pages():
    return ["README.md"] + sorted(os.path.join("docs", f) for f in os.listdir(os.path.join(REPO, "docs"))
                                  if f.endswith(".md"))


def without_code_blocks(text: str) -> str:
    """The page without its fenced blocks (a fence opens a line; inline code stays)."""
    return re.sub(r"^( *)```.*?^\1```", "", text, flags=re.S | re.M)


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: str):
    text = without_code_blocks(read(page))  # a '#' line in a code block is no heading
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6} +(.+?) *$", text, flags=re.M)}


def test_no_reference_outside_the_repository():
    hits = [f"{path}:{n}: {line.strip()[:120]}" for path in project_files()
            for n, line in enumerate(read(path).splitlines(), 1) if OUTSIDE.search(line)]
    assert not hits, "references to files or issues outside the repository:\n" + "\n".join(hits)


@pytest.mark.parametrize("page", pages())
def test_relative_links_name_files_and_headings_that_exist(page):
    text = without_code_blocks(read(page))
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: ...
            continue
        path, _, anchor = target.partition("#")
        file = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
        if not os.path.exists(os.path.join(REPO, file)):
            broken.append(f"{target}: no file {file}")
        elif anchor and file.endswith(".md") and anchor not in anchors(file):
            broken.append(f"{target}: no heading #{anchor} in {file}")
    assert not broken, f"{page}: " + "; ".join(broken)


def test_the_codes_pointers_into_the_docs_exist():
    broken = [f"{path}: docs/{page}#{anchor}" for path in project_files() if not path.endswith(".md")
              for page, anchor in CODE_ANCHOR.findall(read(path))
              if not os.path.isfile(os.path.join(REPO, "docs", page))
              or (anchor and anchor not in anchors(os.path.join("docs", page)))]
    assert not broken, "pointers to missing docs pages or headings:\n" + "\n".join(sorted(set(broken)))

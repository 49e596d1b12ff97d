"""What a newcomer reads: the README's commands match what CI runs, and the app's requirements stay lean."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import FETCH, REPO  # noqa: E402

TEST_ONLY = ("pytest", "playwright")


def _names(path: Path) -> set[str]:
    out = set()
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            out.add(re.split(r"[<>=!~\[ ;]", line)[0].lower())
    return out


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    tests = readme[readme.index("## Tests"):]
    command = re.search(r"```bash\n(.+?)\n```", tests, re.S).group(1).strip()
    assert "requirements-test.txt" in command
    assert (REPO / ".ci" / "run").read_text().rstrip().splitlines()[-1] == command


def test_test_only_packages_are_kept_apart():
    app, test = _names(REPO / "requirements.txt"), _names(REPO / "requirements-test.txt")
    assert not app & set(TEST_ONLY), app
    assert set(TEST_ONLY) <= test
    assert "-r requirements.txt" in (REPO / "requirements-test.txt").read_text()


def test_readme_says_which_torch_build_to_expect():
    readme = (REPO / "README.md").read_text()
    assert "CUDA build" in readme and "https://download.pytorch.org/whl/cpu" in readme


def test_the_repository_fetches_its_own_collections():
    assert FETCH == REPO / "scripts" / "fetch_datasets.sh" or FETCH.is_file()
    listed = subprocess.run(["bash", str(REPO / "scripts" / "fetch_datasets.sh"), "list"], capture_output=True,
                            text=True, check=True).stdout
    readme = (REPO / "README.md").read_text()
    for name in ("freedesktop", "asterisk-en", "drascula"):
        assert name in listed and f"`{name}`" in readme
    for path in [REPO / ".ci" / "run", REPO / "tests" / "conftest.py", *sorted((REPO / "bench").glob("*.py"))]:
        assert "shared/datasets" not in path.read_text() and '"shared"' not in path.read_text(), path

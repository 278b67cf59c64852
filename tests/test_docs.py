"""The documentation's commands run as written: every ```bash block of README.md and
docs/*.md, in order, each page in a fresh directory, at tiny shapes; a command that the
README gives word for word runs once, there. Only the corpus and the sizes are substituted
(--data, --emsize, --nhid, --batch_size, --bptt, --epochs, --cutoffs, --budget-minutes,
--nproc_per_node); a command that collides with an earlier one (a checkpoint already at its
--save) or names a flag that no longer exists fails here."""

import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from settings import RECIPES

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = ["README.md"] + sorted(os.path.join("docs", name)
                               for name in os.listdir(os.path.join(REPO, "docs"))
                               if name.endswith(".md"))

# The sizes every training command gets (replacing the page's where it gives them).
SIZES = {"--emsize": "16", "--nhid": "16", "--batch_size": "4", "--bptt": "8", "--epochs": "1"}
# Replaced only where a command gives them: tiny versions of what it asks for.
WHERE_GIVEN = {"--cutoffs": "10,20", "--budget-minutes": "0.15", "--nproc_per_node": "2"}

# Commands that do not run here, each with why.
NOT_RUN = {
    "pip install": "installs the project; .ci/run runs these installs on a bare machine",
    "python -m pytest": "the test suite itself",
    "HOST:": "names a second machine",
    "scripts/gpu_check.sh results/": "needs a GPU",
    "scripts/gpu_check.sh --long": "needs a GPU",
    "scripts/gpu_check.sh --smoke": "tests/test_gpu_check.py runs this very command",
}

# The files a page uses but leaves its reader to make first, or makes with a command that
# the README gives word for word (which runs once, in the README's directory): the page
# runs on copies of those the README's commands wrote.
PREREQUISITES = {"docs/evaluation.md": ["checkpoints/awd.pt", "checkpoints/cpu30.pt"],
                 "docs/training.md": ["checkpoints/awd.csv", "checkpoints/1cycle.csv"]}


def commands(page):
    """The page's shell commands in order: one per line of its bash blocks (continuation
    lines joined, `a && b` split in two), comments dropped."""
    text = open(os.path.join(REPO, page), encoding="utf-8").read()
    found = []
    for _indent, body in re.findall(r"^( *)```bash\n(.*?)^\1```", text, re.M | re.S):
        body = re.sub(r"\\\n\s*", " ", body)
        for line in body.splitlines():
            words = shlex.split(line, comments=True)
            while words:
                cut = words.index("&&") if "&&" in words else len(words)
                found.append(words[:cut])
                words = words[cut + 1:]
    return found


def reason_not_run(words):
    line = " ".join(words)
    return next((why for start, why in NOT_RUN.items() if start in line), None)


def tiny(words, corpus):
    """`words` with the corpus and sizes replaced, for train.py (also under torchrun)."""
    words = [corpus if before == "--data" else WHERE_GIVEN.get(before, SIZES.get(before, word))
             for before, word in zip([None] + words, words)]
    if "train.py" not in words:
        return words
    recipe = RECIPES.get(words[words.index("--recipe") + 1]) if "--recipe" in words else {}
    added = {"--data": corpus, **SIZES}
    if recipe.get("cutoffs"):
        added["--cutoffs"] = WHERE_GIVEN["--cutoffs"]
    for name, value in added.items():
        if name not in words:
            words += [name, value]
    return words


def run_in(directory, words):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    while words and re.fullmatch(r"\w+=.*", words[0]):
        name, value = words.pop(0).split("=", 1)
        env[name] = value
    programs = {"python": [sys.executable],
                "torchrun": [sys.executable, "-m", "torch.distributed.run"]}
    argv = programs.get(words[0], words[:1]) + words[1:]
    return subprocess.run(argv, cwd=directory, env=env, capture_output=True, text=True,
                          timeout=180)


def workplace(directory):
    """A fresh directory that looks like the repository's root to the commands: its scripts
    and committed results linked, no checkpoints."""
    directory.mkdir()
    for name in os.listdir(REPO):
        if name.endswith(".py") or name == "scripts":
            (directory / name).symlink_to(os.path.join(REPO, name))
    # results/ is a directory of its own, so that a command's output there stays here
    (directory / "results").mkdir()
    for name in os.listdir(os.path.join(REPO, "results")):
        (directory / "results" / name).symlink_to(os.path.join(REPO, "results", name))
    return directory


def run_page(page, directory, corpus, after_each=lambda: None):
    """Each command of `page` in `directory`, in order, calling `after_each()` after each:
    (the commands that ran, the first failure's message or None)."""
    ran = []
    readme = commands("README.md") if page != "README.md" else []
    for words in commands(page):
        if reason_not_run(words) or words in readme:
            continue
        done = run_in(directory, tiny(words, corpus))
        ran.append(shlex.join(words))
        after_each()
        if done.returncode != 0:
            return ran, (f"{page}: `{ran[-1]}` failed:\n{done.stdout[-1500:]}\n"
                         f"{done.stderr[-1500:]}")
    return ran, None


def run_docs_page(page, readme_directory, root, corpus):
    """`page` run in a fresh directory under `root`, with the checkpoints it needs copied
    from where the README's commands wrote them."""
    directory = workplace(root / page.replace("/", "-"))
    (directory / "checkpoints").mkdir()
    for needed in PREREQUISITES.get(page, []):
        shutil.copy(readme_directory / needed, directory / needed)
    return run_page(page, directory, corpus)


@pytest.fixture(scope="module")
def pages_run(tmp_path_factory, random_text):
    """Every page's commands, run once: {page: (the commands that ran, a failure or None)}
    and the README's directory. Two at a time (two cores): the README in one thread; in the
    other, the pages that need nothing of it, then each page that does once the README's
    commands have written what it needs."""
    root = tmp_path_factory.mktemp("docs")
    readme = workplace(root / "readme")
    ready = {page: threading.Event() for page in PREREQUISITES}

    def release():
        for page, event in ready.items():
            if all((readme / needed).exists() for needed in PREREQUISITES[page]):
                event.set()

    def the_readme():
        try:
            return run_page("README.md", readme, random_text, after_each=release)
        finally:  # (a README that failed early: the pages below fail on what is missing)
            for event in ready.values():
                event.set()

    def the_other_pages():
        results = {}
        for page in PAGES[1:]:
            if page in ready:
                ready[page].wait()
            results[page] = run_docs_page(page, readme, root, random_text)
        return results

    with ThreadPoolExecutor(2) as pool:
        first, others = pool.submit(the_readme), pool.submit(the_other_pages)
        return {"README.md": first.result(), **others.result()}, readme


def test_the_readme_commands_run_in_order(pages_run):
    results, directory = pages_run
    ran, failure = results["README.md"]
    assert failure is None, failure
    assert any("--recipe cpu30" in c for c in ran) and any("torchrun" in c for c in ran)
    for name in ("awd", "cpu30", "1cycle", "awd-finetune"):
        assert (directory / "checkpoints" / f"{name}.pt").exists(), name


@pytest.mark.parametrize("page", PAGES[1:])
def test_each_docs_page_runs_its_commands_in_order(page, pages_run):
    ran, failure = pages_run[0][page]
    assert failure is None, failure
    readme = commands("README.md")
    assert ran or all(reason_not_run(c) or c in readme for c in commands(page)), page


def test_every_command_not_run_is_in_the_docs_and_the_rest_are_substituted():
    every = [c for page in PAGES for c in commands(page)]
    for start in NOT_RUN:  # a reason that no longer matches a command is dropped
        assert any(start in " ".join(c) for c in every), start
    train = tiny(["python", "train.py", "--recipe", "cpu30", "--emsize", "400"], "corpus")
    assert train[:6] == ["python", "train.py", "--recipe", "cpu30", "--emsize", "16"]
    assert set(SIZES) | {"--data", "--cutoffs"} <= set(train)


def test_every_figure_of_the_readmes_results_table_is_in_the_evidence_it_cites():
    text = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
    table = text[text.index("| run | valid / test |"):].split("\n\n")[0].splitlines()[2:]
    checked = 0
    for row in table:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        cited = re.search(r"`(results/[^`]+)`", cells[-1])
        if not cited:  # a target: its authors' own figures, cited by name
            assert "README" in cells[-1] or "et al." in cells[-1], row
            continue
        evidence = ""
        for root, _, names in os.walk(os.path.join(REPO, cited.group(1))):
            evidence += "".join(open(os.path.join(root, name), errors="replace").read()
                                for name in names if not name.endswith(".png"))
        for figure in re.findall(r"\d+\.\d+", cells[1]):
            assert figure in evidence, f"{figure} is not in {cited.group(1)}"
            checked += 1
    assert checked >= 7


def test_every_evidence_file_the_docs_cite_exists_and_its_folder_names_it():
    """A path under results/ in README.md or docs/ exists, and results/README.md's index
    names it: a folder by its row, a file in its folder's row (or, at the top, anywhere)."""
    index = open(os.path.join(REPO, "results", "README.md"), encoding="utf-8").read()
    rows = {re.match(r"\| `([^`/]+)/`", line).group(1): line
            for line in index.splitlines() if re.match(r"\| `[^`/]+/`", line)}
    cited = set()
    for page in PAGES:
        text = open(os.path.join(REPO, page), encoding="utf-8").read()
        cited |= set(re.findall(r"results/([\w.-]+(?:/[\w.-]+)*/?)", text))
    cited -= {"gpu-h200-DATE"}  # (scripts/gpu_check.sh's output, named by its command)
    assert len(cited) >= 20
    for path in sorted(cited):
        assert os.path.exists(os.path.join(REPO, "results", path)), path
        folder, _, rest = path.partition("/")
        if not rest:
            assert f"`{path}`" in index or (folder in rows), path
        else:
            assert folder in rows, f"results/README.md has no row for {folder}/"
            if rest.strip("/"):
                assert rest.strip("/").split("/")[0] in rows[folder], path

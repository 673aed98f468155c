"""The notebooks read as nbdev documentation: nbdev's title cells, a home page that agrees with the README, notebooks
that nbdev's processors render with every signature, and a docstring on everything exported.

The rules a notebook must meet are checked per notebook, each check a test that covers its notebook (its `covers`
mark): `make test NB=14_metrics` runs every check of this file that `make test` runs on nbs/14_metrics.ipynb."""
import ast
import importlib
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

COVERS = ("index",)  # the notebooks these tests cover: `make test NB=...` runs them (and each per-notebook test its own)

NOTEBOOKS = sorted(p.relative_to(REPO/"nbs") for p in (REPO/"nbs").rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
LIBRARY = [p for p in NOTEBOOKS if p.parent == Path(".") and p.name[:1].isdigit()]  # nbs/[0-9]*.ipynb


def _key(rel: Path) -> str:
    "A notebook's name for `make test NB=...` and the covers mark: its path under nbs/ without .ipynb."
    return rel.with_suffix("").as_posix()


def _module(rel: Path) -> str | None:
    "The module a notebook exports to (its `#| default_exp`), or None."
    cells = json.loads((REPO/"nbs"/rel).read_text())["cells"]
    found = [m[1] for c in cells if (m := re.match(r"#\|\s*default_exp\s+(\S+)", "".join(c["source"])))]
    return found[0] if found else None


def per_notebook(notebooks):
    "One parameter per notebook, each covering its notebook."
    return [pytest.param(rel, id=_key(rel), marks=pytest.mark.covers(_key(rel))) for rel in notebooks]


EXPORTING = [rel for rel in NOTEBOOKS if _module(rel)]
TITLED = sorted(set(LIBRARY) | set(EXPORTING))  # a library notebook, or any that exports a module, wherever it is


def test_the_per_notebook_checks_see_every_notebook():
    assert len(LIBRARY) >= 15 and len(NOTEBOOKS) >= 17 and len(EXPORTING) >= 15, NOTEBOOKS
    assert Path("index.ipynb") in NOTEBOOKS and Path("experiments/train_digits.ipynb") in NOTEBOOKS


@pytest.mark.parametrize("nb", per_notebook(TITLED))
def test_a_library_notebook_opens_with_an_nbdev_title_and_summary(nb):
    first = json.loads((REPO/"nbs"/nb).read_text())["cells"][0]
    source = first["source"] if isinstance(first["source"], str) else "".join(first["source"])
    # "# # core" renders as a heading "# core"; nbdev takes "# core" as the page title and "> ..." as its summary
    assert first["cell_type"] == "markdown" and re.match(r"# [^#\s][^\n]*\n\n> \S", source), (
        f"{nb}: the first cell must be markdown '# title', a blank line, then '> one-line summary'; it is {source[:60]!r}")


def _markdown(path):
    "A README's text, or a notebook's markdown cells joined."
    if path.suffix == ".md": return path.read_text()
    cells = json.loads(path.read_text())["cells"]
    return "\n\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")


def _setup_commands(text):
    m = re.search(r"^## Quickstart: two commands\n.*?^```bash\n(.*?)^```", text, re.S | re.M)
    return m and m.group(1)


def _module_table(text):
    m = re.search(r"^## The library\n\n((?:\|.*\n?)+)", text, re.M)
    return m and m.group(1).strip()


def test_the_docs_home_page_and_the_readme_give_the_same_two_commands_and_module_table():
    "nbs/index.ipynb (settings.ini's readme_nb: the site's home page) and README.md may word things apart, not these."
    assert re.search(r"^readme_nb\s*=\s*index\.ipynb$", (REPO/"settings.ini").read_text(), re.M)
    index, readme = _markdown(REPO/"nbs"/"index.ipynb"), _markdown(REPO/"README.md")
    commands, table = _setup_commands(readme), _module_table(readme)
    assert commands and "make test" in commands and "make train" in commands, commands
    assert _setup_commands(index) == commands
    assert table and _module_table(index) == table
    modules = {p.stem for p in (REPO/"mlkit").glob("*.py") if not p.stem.startswith("_")}
    assert set(re.findall(r"^\| `mlkit\.(\w+)`", table, re.M)) == modules, "the module table lists every module"


@pytest.mark.parametrize("nb", per_notebook(EXPORTING))
def test_a_module_is_listed_in_the_readme_and_the_docs_home_page(nb):
    "README.md's library table and nbs/index.ipynb's (the site's home page) each have a row for the notebook's module."
    row = f"| `mlkit.{_module(nb)}` (`{_key(nb)}`) |"
    for where in (REPO/"README.md", REPO/"nbs"/"index.ipynb"):
        table = _module_table(_markdown(where)) or ""
        assert any(line.startswith(row) for line in table.splitlines()), (
            f"{nb}: {where.relative_to(REPO)}'s table under '## The library' has no row '{row} what it gives |'")


# What nbdev_docs runs before Quarto: nbdev's processors over each notebook (show_doc cells added and executed, test
# cells and directives handled), through nbdev's own driver (serve_drv.main, as proc_nbs calls it). A cell mixing imports
# with other code is a failure: nbdev would execute it to build the docs (its "imports and other code" warning).
# One process processes all the notebooks the selected tests need (one import of torch and mlkit) and reports per notebook.
PROC_NBS = """
import json, sys, traceback, warnings
from pathlib import Path
import nbdev.serve_drv
from nbdev.processors import FilterDefaults
report = {}
for rel in json.loads(sys.argv[1]):
    src, dst = Path("nbs")/rel, Path("_proc")/rel
    dst.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try: nbdev.serve_drv.main((src, dst, FilterDefaults)); error = None
        except BaseException: error = traceback.format_exc()[-3000:]
    mixed = [str(w.message) for w in caught if "Found cells containing imports" in str(w.message)]
    report[rel] = {"error": error, "mixed": mixed}
Path("report.json").write_text(json.dumps(report))
"""


@pytest.fixture(scope="session")
def processed(request, tmp_path_factory):
    "The folder holding _proc/ and report.json: the notebooks the selected processor tests need, processed once."
    wanted = sorted({str(item.callspec.params["nb"]) for item in request.session.items
                     if getattr(item, "originalname", "") == "test_nbdev_s_processors_render_the_notebook_and_its_signatures"})
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"): base = base.parent  # one for all the workers of this run
    folder = base/"nbdev-processed"
    from filelock import FileLock
    with FileLock(str(base/"nbdev-processed.lock")):
        if not (folder/"report.json").exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            shutil.copy2(REPO/"settings.ini", folder)
            shutil.copytree(REPO/"nbs", folder/"nbs", ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
            r = subprocess.run([sys.executable, "-c", PROC_NBS, json.dumps(wanted)], cwd=folder, capture_output=True,
                               text=True, timeout=600)
            assert r.returncode == 0, r.stderr[-3000:]
    return folder


def _signature_block(cell):
    md = "".join("".join(o.get("data", {}).get("text/markdown", [])) for o in cell.get("outputs", []))
    m = re.search(r"```python\n(.*?)```", md, re.S)
    return m and m.group(1)


@pytest.mark.parametrize("nb", per_notebook(NOTEBOOKS))
def test_nbdev_s_processors_render_the_notebook_and_its_signatures(nb, processed):
    "nbdev's processors run the notebook, no cell mixes imports with other code, every show_doc renders its signature."
    report = json.loads((processed/"report.json").read_text())[str(nb)]
    assert report["error"] is None, f"{nb}: nbdev's processors failed:\n{report['error']}"
    assert not report["mixed"], (f"{nb}: a cell mixes imports with other code (nbdev runs it to build the docs); put the "
                                 f"imports in a cell of their own: {report['mixed'][0]}")
    done = processed/"_proc"/nb
    assert done.exists(), f"{nb} was not processed"
    module = _module(nb)
    scope = vars(importlib.import_module(f"mlkit.{module}")) if module else {}
    for cell in json.loads(done.read_text())["cells"]:
        source = "".join(cell["source"])
        if cell["cell_type"] != "code" or "show_doc(" not in source: continue
        call = next(n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "show_doc")
        name = ast.unparse(call.args[0])
        obj = eval(name, dict(scope))
        obj = obj.fget if isinstance(obj, property) else obj  # a @patch(as_prop=True) property: its getter
        shown = _signature_block(cell)
        assert shown, f"{nb}: show_doc({name}) rendered no signature"
        params = [p for p in inspect.signature(obj).parameters.values() if p.name not in ("self", "cls")]
        # `(*args, **kwargs)` with no annotation tells the reader nothing (an exception class without __init__)
        told = [p for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.annotation is not p.empty]
        assert told or not params, f"{nb}: show_doc({name}) renders only *args, **kwargs: {shown!r}"
        missing = [p.name for p in params if not re.search(rf"\b{p.name}\b", shown)]
        assert not missing, f"{nb}: show_doc({name}) renders {shown!r}, without {missing}"


def _own_doc(obj):
    doc = obj.__dict__.get("__doc__") if inspect.isclass(obj) else obj.__doc__
    # a dataclass without a docstring gets one made of its signature
    return None if not doc or (inspect.isclass(obj) and doc.startswith(f"{obj.__name__}(")) else doc


@pytest.mark.parametrize("nb", per_notebook(EXPORTING))
def test_every_exported_function_and_class_has_a_docstring(nb):
    module = importlib.import_module(f"mlkit.{_module(nb)}")
    undocumented = [f"{module.__name__}.{name}" for name in getattr(module, "__all__", [])
                    if (inspect.isclass(obj := getattr(module, name)) or inspect.isfunction(obj))
                    and obj.__module__ == module.__name__ and not _own_doc(obj)]
    assert undocumented == [], f"{nb}: give these a one-line docstring: {', '.join(undocumented)}"


def test_make_docs_without_quarto_says_so_in_one_line_and_builds_nothing(repo_copy, tmp_path):
    from conftest import make
    bin_dir = tmp_path/"bin"  # this PATH's programs, but quarto should it be installed
    bin_dir.mkdir()
    for folder in filter(None, os.environ["PATH"].split(os.pathsep)):
        for program in (Path(folder).iterdir() if Path(folder).is_dir() else []):
            if program.name != "quarto" and not (bin_dir/program.name).exists(): (bin_dir/program.name).symlink_to(program)
    readme = (repo_copy/"README.md").read_bytes()
    r = subprocess.run(["make", "--no-print-directory", "docs", "NO_INSTALL=1", f"ENV={sys.prefix}"],
                       cwd=repo_copy, capture_output=True, text=True, timeout=60, env={**os.environ, "PATH": str(bin_dir)})
    errors = [line for line in r.stderr.splitlines() if not re.match(r"make(\[\d+\])?: \*\*\*", line)]  # make's own
    assert r.returncode != 0 and len(errors) == 1 and "make docs needs Quarto" in errors[0], r.stderr
    assert not (repo_copy/"_docs").exists() and not (repo_copy/"_proc").exists()
    assert (repo_copy/"README.md").read_bytes() == readme
    assert make("-n", "docs", cwd=repo_copy).returncode == 0  # (the recipe itself parses)


def test_the_docs_workflow_builds_with_make_docs_and_deploys_the_doc_path():
    import yaml
    workflow = yaml.safe_load((REPO/".github"/"workflows"/"docs.yml").read_text())
    build = workflow["jobs"]["build"]["steps"]
    doc_path = re.search(r"^doc_path\s*=\s*(\S+)", (REPO/"settings.ini").read_text(), re.M).group(1)
    runs = [s.get("run", "") for s in build]
    assert "make install TORCH=cpu" in runs and "make docs" in runs
    assert runs.index("make docs") > runs.index("make install TORCH=cpu")
    assert any(s.get("uses", "").startswith("quarto-dev/quarto-actions/setup") for s in build)
    [upload] = [s for s in build if s.get("uses", "").startswith("actions/upload-pages-artifact")]
    assert upload["with"]["path"] == doc_path
    assert workflow["jobs"]["deploy"]["steps"][0]["uses"].startswith("actions/deploy-pages")
    assert workflow["permissions"] == {"contents": "read", "pages": "write", "id-token": "write"}


def _library_notebook(module, title=True, docstring=True, mixed=False):
    "A small library notebook exporting `module`, obeying every rule but the ones asked to break."
    def cell(kind, source):
        c = {"cell_type": kind, "id": f"{abs(hash((module, source))) % 16**8:08x}", "metadata": {}, "source": source}
        return c | ({"execution_count": None, "outputs": []} if kind == "code" else {})
    doc = '    "The mean of `xs`."\n' if docstring else ""
    cells = [cell("markdown", f"# {module}\n\n> Means." if title else f"{module}: means"),
             cell("code", f"#| default_exp {module}"), cell("code", "#| export\nimport statistics"),
             cell("code", f"#| export\ndef mean(xs:list, # numbers\n        ) -> float:\n{doc}    return statistics.mean(xs)"),
             cell("code", "import math\nx = mean([1, 3])\nassert x == math.floor(2.5)" if mixed else "assert mean([1, 3]) == 2")]
    return {"cells": cells, "metadata": {"kernelspec": {"display_name": "Python (mlkit)", "language": "python", "name": "mlkit"}},
            "nbformat": 4, "nbformat_minor": 5}


def _add_notebook(repo, stem, module, listed=True, **broken):
    (repo/"nbs"/f"{stem}.ipynb").write_text(json.dumps(_library_notebook(module, **broken), indent=1) + "\n")
    if not listed: return
    row = f"| `mlkit.{module}` (`{stem}`) | means |"
    anchor = "| `mlkit.new` (`13_new`) |"
    readme = (repo/"README.md").read_text()
    (repo/"README.md").write_text(re.sub(rf"^({re.escape(anchor)}.*)$", lambda m: m[1] + "\n" + row, readme, count=1, flags=re.M))
    index = json.loads((repo/"nbs"/"index.ipynb").read_text())
    for c in index["cells"]:
        i = next((i for i, line in enumerate(c["source"]) if line.startswith(anchor)), None)
        if i is not None: c["source"].insert(i + 1, row + "\n")
    (repo/"nbs"/"index.ipynb").write_text(json.dumps(index, indent=1, ensure_ascii=False) + "\n")


@pytest.mark.slow  # about 30 s: nbdev_test, two pytest runs and one make test in a copy
def test_make_test_nb_runs_every_docs_rule_on_that_notebook(repo_copy):
    "A new notebook that passes `make test NB=X` meets the rules `make test` checks; each broken rule fails `make test NB=X`."
    from conftest import make
    _add_notebook(repo_copy, "15_means", "means")
    _add_notebook(repo_copy, "16_untitled", "untitled", title=False)
    _add_notebook(repo_copy, "17_docless", "docless", docstring=False)
    _add_notebook(repo_copy, "18_mixed", "mixed", mixed=True)
    _add_notebook(repo_copy, "19_unlisted", "unlisted", listed=False)
    env = {**os.environ, "PYTHONPATH": str(repo_copy)}  # the copy's mlkit (with its new modules), not this checkout's
    subprocess.run([str(Path(sys.executable).parent/"nbdev_export")], cwd=repo_copy, check=True, env=env)
    ok = subprocess.run(["make", "--no-print-directory", "test", "NB=15_means", "NO_INSTALL=1", f"ENV={sys.prefix}"],
                        cwd=repo_copy, capture_output=True, text=True, timeout=300, env=env)
    assert ok.returncode == 0 and "4 passed" in ok.stdout, ok.stdout[-3000:] + ok.stderr[-3000:]
    broken = {"16_untitled": ("test_a_library_notebook_opens_with_an_nbdev_title_and_summary", "'# title'"),
              "17_docless": ("test_every_exported_function_and_class_has_a_docstring", "mlkit.docless.mean"),
              "18_mixed": ("test_nbdev_s_processors_render_the_notebook_and_its_signatures", "mixes imports"),
              "19_unlisted": ("test_a_module_is_listed_in_the_readme_and_the_docs_home_page", "has no row")}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rf", "tests/test_docs.py",
                        *[a for nb in broken for a in ("--nb", nb)]], cwd=repo_copy, capture_output=True, text=True,
                       timeout=300, env=env)
    failed = [ln for ln in r.stdout.splitlines() if ln.startswith("FAILED")]
    assert len(failed) == 4, r.stdout[-3000:]
    for nb, (test, message) in broken.items():
        assert any(f"{test}[{nb}]" in ln for ln in failed) and f"{nb}.ipynb: " in r.stdout and message in r.stdout, (nb, failed)
    mixed = make("test", "NB=18_mixed", cwd=repo_copy)  # and through make, as a user runs it
    assert mixed.returncode != 0 and "mixes imports" in mixed.stdout, mixed.stdout[-2000:]

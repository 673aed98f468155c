"""The notebooks read as nbdev documentation: nbdev's title cells, a home page that agrees with the README, notebooks
that nbdev's processors render with every signature, and a docstring on everything exported."""
import ast
import importlib
import inspect
import json
import os
import pkgutil
import re
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import REPO

import mlkit

COVERS = ("index",)  # the notebooks these tests cover: `make test NB=...` runs them


def test_every_library_notebook_opens_with_an_nbdev_title_and_summary():
    notebooks = sorted((REPO/"nbs").glob("[0-9]*.ipynb"))
    assert len(notebooks) >= 14
    for path in notebooks:
        first = json.loads(path.read_text())["cells"][0]
        source = first["source"] if isinstance(first["source"], str) else "".join(first["source"])
        # "# # core" renders as a heading "# core"; nbdev takes "# core" as the page title and "> ..." as its summary
        assert first["cell_type"] == "markdown" and re.match(r"# [^#\s][^\n]*\n\n> \S", source), (path.name, source[:60])


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


# What nbdev_docs runs before Quarto: nbdev's processors over every notebook (show_doc cells added and executed, test
# cells and directives handled), through nbdev's own driver (proc_nbs). A cell mixing imports with other code is a failure:
# nbdev would execute it to build the docs (its "imports and other code" warning).
PROC_NBS = """
import warnings
warnings.filterwarnings("error", message="Found cells containing imports", category=UserWarning)
from nbdev.serve import proc_nbs
proc_nbs(n_workers=0, force=True)  # in this one process: one import of torch and mlkit, not one per worker
"""


def _signature_block(cell):
    md = "".join("".join(o.get("data", {}).get("text/markdown", [])) for o in cell.get("outputs", []))
    m = re.search(r"```python\n(.*?)```", md, re.S)
    return m and m.group(1)


def test_nbdev_s_processors_handle_every_notebook_and_every_show_doc_renders_its_signature(tmp_path):
    shutil.copy2(REPO/"settings.ini", tmp_path)
    shutil.copytree(REPO/"nbs", tmp_path/"nbs", ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    r = subprocess.run([sys.executable, "-c", PROC_NBS], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "PYTHONWARNINGS": "error:Found cells containing imports:UserWarning"})
    assert r.returncode == 0, r.stderr[-3000:]
    sources = sorted((REPO/"nbs").rglob("*.ipynb"))
    assert len(sources) >= 16
    checked = 0
    for src in sources:
        done = tmp_path/"_proc"/src.relative_to(REPO/"nbs")
        assert done.exists(), f"{src.name} was not processed"
        exp = [m.group(1) for c in json.loads(src.read_text())["cells"]
               if (m := re.match(r"#\| default_exp (\S+)", "".join(c["source"])))]
        scope = vars(importlib.import_module(f"mlkit.{exp[0]}")) if exp else {}
        for cell in json.loads(done.read_text())["cells"]:
            source = "".join(cell["source"])
            if cell["cell_type"] != "code" or "show_doc(" not in source: continue
            call = next(n for n in ast.walk(ast.parse(source))
                        if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "show_doc")
            name = ast.unparse(call.args[0])
            obj = eval(name, dict(scope))
            shown = _signature_block(cell)
            assert shown, f"{src.name}: show_doc({name}) rendered no signature"
            params = [p for p in inspect.signature(obj).parameters.values() if p.name not in ("self", "cls")]
            # `(*args, **kwargs)` with no annotation tells the reader nothing (an exception class without __init__)
            told = [p for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.annotation is not p.empty]
            assert told or not params, f"{src.name}: show_doc({name}) renders only *args, **kwargs: {shown!r}"
            missing = [p.name for p in params if not re.search(rf"\b{p.name}\b", shown)]
            assert not missing, f"{src.name}: show_doc({name}) renders {shown!r}, without {missing}"
            checked += 1
    assert checked >= 100, checked


def _own_doc(obj):
    doc = obj.__dict__.get("__doc__") if inspect.isclass(obj) else obj.__doc__
    # a dataclass without a docstring gets one made of its signature
    return None if not doc or (inspect.isclass(obj) and doc.startswith(f"{obj.__name__}(")) else doc


def test_every_exported_function_and_class_has_a_docstring():
    undocumented = []
    for info in pkgutil.iter_modules(mlkit.__path__):
        module = importlib.import_module(f"mlkit.{info.name}")
        for name in getattr(module, "__all__", []):
            obj = getattr(module, name)
            if (inspect.isclass(obj) or inspect.isfunction(obj)) and obj.__module__ == module.__name__ and not _own_doc(obj):
                undocumented.append(f"mlkit.{info.name}.{name}")
    assert undocumented == [], undocumented


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

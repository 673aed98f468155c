"""The house rules of the package's shape: imports run one way, floor by floor, as nbs/index.ipynb's "How it is built"
says; the CLI imports only public names; no module over 600 lines; exported cells small, each public name with prose
and an example or assertion in its notebook (as nbdev's and fastcore's notebooks do)."""
import ast
import json
import re
import statistics
from pathlib import Path

import pytest
from conftest import REPO
from test_docs import EXPORTING, _key, per_notebook

COVERS = ("index",)

PACKAGE = REPO/"mlkit"
MODULES = sorted(p.stem for p in PACKAGE.glob("*.py") if not p.stem.startswith("_"))
MAX_MODULE_LINES = 600
MAX_CELL_LINES, MEDIAN_CELL_LINES = 100, 20


def floors(index_text:str) -> dict:
    "{module: floor} from the `- floor N: `a`, `b` ...` lines of the 'How it is built' section."
    section = re.search(r"^## How it is built\n(.*?)(?=^## |\Z)", index_text, re.S | re.M)
    assert section, "nbs/index.ipynb has no '## How it is built' section"
    out = {}
    for n, mods in re.findall(r"^- floor (\d+): (.*)$", section.group(1), re.M):
        for m in re.findall(r"`(\w+)`", mods.split(" — ")[0]):
            assert m not in out, f"{m} is on two floors"
            out[m] = int(n)
    return out


def _index_markdown() -> str:
    cells = json.loads((REPO/"nbs"/"index.ipynb").read_text())["cells"]
    return "\n\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")


def imported_modules(source:str, package:str="mlkit") -> list[tuple[str, list[str], int]]:
    "Every (module, names, line) of `package` that `source` imports, at any depth (lazy imports in functions too)."
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            names = [a.name for a in node.names]
            if node.level == 1 and node.module: out.append((node.module.split(".")[0], names, node.lineno))
            elif node.level == 1: out += [(n, [], node.lineno) for n in names]
            elif node.module == package: out += [(n, [], node.lineno) for n in names]
            elif node.module and node.module.startswith(package + "."):
                out.append((node.module.split(".")[1], names, node.lineno))
        elif isinstance(node, ast.Import):
            out += [(a.name.split(".")[1], [], node.lineno) for a in node.names if a.name.startswith(package + ".")]
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module":
            arg = node.args[0] if node.args else None
            if isinstance(arg, ast.Constant) and str(arg.value).startswith(package + "."):
                out.append((str(arg.value).split(".")[1], [], node.lineno))
    return out


def upward_imports(sources:dict, floor_of:dict) -> list[str]:
    "Each import of a module on the same floor or a higher one, as 'a.py:line imports b (floor i -> j)'."
    bad = []
    for mod, source in sources.items():
        for dep, _, line in imported_modules(source):
            if dep == mod or dep not in floor_of: continue
            if floor_of[dep] >= floor_of[mod]:
                bad.append(f"{mod}.py:{line} imports {dep} (floor {floor_of[mod]} -> {floor_of[dep]})")
    return bad


def _sources() -> dict: return {m: (PACKAGE/f"{m}.py").read_text() for m in MODULES}


def test_every_module_has_a_floor_and_none_imports_a_higher_one():
    floor_of = floors(_index_markdown())
    assert sorted(floor_of) == MODULES, f"'How it is built' lists {sorted(floor_of)}, the package has {MODULES}"
    assert upward_imports(_sources(), floor_of) == []


def test_the_floor_check_fails_on_an_upward_import_even_a_lazy_one():
    floor_of = floors(_index_markdown())
    sources = _sources()
    low = min(floor_of, key=floor_of.get)
    high = max(floor_of, key=floor_of.get)
    lazy = sources[low] + f"\n\ndef _later():\n    from mlkit.{high} import main\n    return main\n"
    assert upward_imports({**sources, low: lazy}, floor_of) == [
        f"{low}.py:{len(lazy.splitlines()) - 1} imports {high} (floor {floor_of[low]} -> {floor_of[high]})"]
    relative = sources[low] + f"\nfrom .{high} import main\n"
    assert len(upward_imports({**sources, low: relative}, floor_of)) == 1
    # a module on the same floor is not below: two modules there may not import each other
    same = [m for m in floor_of if floor_of[m] == floor_of[high] and m != high]
    if same: assert upward_imports({**sources, same[0]: f"import mlkit.{high}\n"}, floor_of)


def test_the_cli_imports_only_public_names():
    private = [f"cli.py:{line} imports {dep}.{n}" for dep, names, line in imported_modules(_sources()["cli"])
               for n in names if n.startswith("_")]
    assert private == []


@pytest.mark.parametrize("module", MODULES)
def test_no_module_is_over_600_lines(module):
    n = len((PACKAGE/f"{module}.py").read_text().splitlines())
    assert n <= MAX_MODULE_LINES, f"mlkit/{module}.py has {n} lines: split it along its notebook's sections"


EXPORT = re.compile(r"^\s*#\s*\|\s*exporti?\s*$", re.M)  # exporti: exported, not public


def _cells(nb:Path) -> list[dict]: return json.loads((REPO/"nbs"/nb).read_text())["cells"]
def _src(cell:dict) -> str: return cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
def _exported(cell:dict) -> bool: return cell["cell_type"] == "code" and bool(EXPORT.match(_src(cell)))
def _public(cell:dict) -> bool: return _exported(cell) and not re.match(r"\s*#\s*\|\s*exporti", _src(cell))
def _lines(source:str) -> int: return len([line for line in source.splitlines() if not re.match(r"\s*#\s*\|", line)])


def cell_sizes(nb:Path) -> list[int]: return [_lines(_src(c)) for c in _cells(nb) if _exported(c)]


@pytest.mark.parametrize("nb", per_notebook(EXPORTING))
def test_no_exported_cell_is_over_100_lines(nb):
    big = [n for n in cell_sizes(nb) if n > MAX_CELL_LINES]
    assert big == [], f"{nb}: exported cells of {big} lines; split them (a function per cell, classes with @patch)"


def test_exported_cells_are_small_as_nbdev_s_own():
    sizes = [n for nb in EXPORTING for n in cell_sizes(nb)]
    assert statistics.median(sizes) <= MEDIAN_CELL_LINES, f"median exported cell: {statistics.median(sizes)} lines"


def public_definitions(source:str) -> list[str]:
    "Public functions and classes an exported cell defines; a `@patch`ed method as Class.method."
    code = re.sub(r"^(\s*)(#\|.*|%.*|!.*)$", r"\1pass", source, flags=re.M)
    out = []
    for n in ast.parse(code).body:
        if not isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) or n.name.startswith("_"): continue
        patched = any(ast.unparse(d).split("(")[0] == "patch" for d in n.decorator_list)
        if patched and n.args.args and n.args.args[0].annotation is not None:
            out.append(f"{ast.unparse(n.args.args[0].annotation)}.{n.name}")
        else: out.append(n.name)
    return out


def undocumented(cells:list[dict]) -> list[str]:
    "Public names whose exported cell no prose follows, or that no later test or example cell uses."
    missing = []
    for i, c in enumerate(cells):
        if not _exported(c): continue
        nxt = next((j for j in range(i + 1, len(cells)) if _exported(cells[j])), len(cells))
        prose = any(cells[j]["cell_type"] == "markdown" for j in range(i + 1, nxt))
        later = [re.sub(r"show_doc\([^)]*\)", "", _src(d)) for d in cells[i + 1:]
                 if d["cell_type"] == "code" and not _exported(d)]
        for full in public_definitions(_src(c)) if _public(c) else []:
            name = full.split(".")[-1]
            used = any(re.search(rf"(?<![\w]){re.escape(name)}\b", s) for s in later)
            if not prose: missing.append(f"{full} (no prose after it)")
            elif not used: missing.append(f"{full} (no example or assertion uses it)")
    return missing


# Deliberate exceptions: public names documented and tested elsewhere, with the reason.
SHOWN_ELSEWHERE = {
}


@pytest.mark.parametrize("nb", per_notebook(EXPORTING))
def test_each_public_function_has_prose_and_an_example_in_its_notebook(nb):
    missing = [m for m in undocumented(_cells(nb)) if m.split(" ")[0] not in SHOWN_ELSEWHERE.get(_key(nb), {})]
    assert missing == [], f"{nb}: {len(missing)} without: {missing}"


def test_the_prose_and_example_check_fails_on_a_bare_function():
    bare = [{"cell_type": "code", "source": "#| export\ndef shiny(x): return x\n"},
            {"cell_type": "code", "source": "show_doc(shiny)"}]
    assert undocumented(bare) == ["shiny (no prose after it)"]
    told = bare + [{"cell_type": "markdown", "source": "`shiny` returns its argument."}]
    told[1], told[2] = told[2], told[1]
    assert undocumented(told) == ["shiny (no example or assertion uses it)"]
    assert undocumented(told + [{"cell_type": "code", "source": "test_eq(shiny(1), 1)"}]) == []
    patched = [{"cell_type": "code", "source": "#| export\n@patch\ndef go(self:Thing, n): pass\n"},
               {"cell_type": "markdown", "source": "Go."}]
    assert undocumented(patched) == ["Thing.go (no example or assertion uses it)"]

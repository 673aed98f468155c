"""The house rules of the package's shape: imports run one way, floor by floor, as nbs/index.ipynb's "How it is built"
says; the CLI imports only public names; no module over 600 lines; exported cells small, each public name with prose
and an example or assertion in its notebook (as nbdev's and fastcore's notebooks do)."""
import ast
import json
import re
import statistics
import sys
from pathlib import Path

import pytest
from conftest import REPO
from test_docs import EXPORTING, _key, per_notebook

COVERS = ("index",)

PACKAGE = REPO/"mlkit"
MODULES = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem not in ("__init__", "_modidx"))  # _modidx: nbdev's index
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


IMPORTERS = ("import_module", "__import__")
STRING_IMPORT = re.compile(r"\b(?:from|import)\s+mlkit\.(\w+)|\bfrom\s+mlkit\s+import\s+(\w+)")


def _literal(node) -> str|None:
    "A string the node is for sure (a constant), else None."
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def imported_modules(source:str, package:str="mlkit") -> list[tuple[str, list[str], int]]:
    """Every (module, names, line) of `package` that `source` imports, at any depth: import statements (lazy ones in
    functions too), `importlib.import_module` and `__import__` calls, and code in strings (a `python -c` a module starts,
    a script it writes). A call whose module name is not a literal is ('?', [], line): it cannot be checked."""
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
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in IMPORTERS:
            args = {**dict(enumerate(node.args)), **{k.arg: k.value for k in node.keywords}}
            name, anchor = args.get(0, args.get("name")), args.get(1, args.get("package"))
            text = _literal(name) if name is not None else None
            if text is None: out.append(("?", [], node.lineno)); continue
            if text.startswith(".") and _literal(anchor) == package: text = package + text
            if text.startswith(package + "."): out.append((text.split(".")[1], [], node.lineno))
            elif text == package:
                fromlist = args.get(3, args.get("fromlist"))
                if isinstance(fromlist, (ast.List, ast.Tuple)):
                    out += [(_literal(e) or "?", [], node.lineno) for e in fromlist.elts]
        elif (text := _literal(node)) is not None:
            for m in STRING_IMPORT.finditer(text):
                out.append((next(g for g in m.groups() if g), [], node.lineno))
    return out


# Modules that import by a computed name, and why that is never an mlkit module.
COMPUTED_IMPORTS = {"trackers": "`_require` imports the optional tracker packages by name (tensorboard, mlflow, wandb)"}


def upward_imports(sources:dict, floor_of:dict) -> list[str]:
    "Each import of a module on the same floor or a higher one, as 'a.py:line imports b (floor i -> j)'."
    bad = []
    for mod, source in sources.items():
        for dep, _, line in imported_modules(source):
            if dep == "?" and mod not in COMPUTED_IMPORTS:
                bad.append(f"{mod}.py:{line} imports a module whose name is computed: name it literally"); continue
            if dep in (mod, "?") or dep not in floor_of: continue
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
    for spelling in (f"__import__('mlkit.{high}', fromlist=['main'])", f"importlib.import_module('.{high}', 'mlkit')",
                     f"importlib.import_module(name='mlkit.{high}')", f"__import__('mlkit', fromlist=['{high}'])",
                     f"subprocess.run([sys.executable, '-c', 'from mlkit.{high} import main; main()'])",
                     "importlib.import_module(f'mlkit.{name}')"):
        hidden = sources[low] + f"\n\ndef _later(name='x'):\n    return {spelling}\n"
        assert len(upward_imports({**sources, low: hidden}, floor_of)) == 1, spelling
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


EXPORTS = ("export", "exports", "exporti")  # nbdev's: exporti exports a name that is not public


def directives(source:str) -> dict:
    "A cell's leading `#| name args` lines, as {name: args}."
    out = {}
    for line in source.splitlines():
        if not (m := re.match(r"\s*#\s*\|\s*([\w-]+):?\s*(.*)$", line)): break
        out[m[1]] = m[2].strip()
    return out


def _cells(nb:Path) -> list[dict]: return json.loads((REPO/"nbs"/nb).read_text())["cells"]
def _src(cell:dict) -> str: return cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
def _exported(cell:dict) -> bool: return cell["cell_type"] == "code" and any(d in EXPORTS for d in directives(_src(cell)))
def _public(cell:dict) -> bool: return _exported(cell) and "exporti" not in directives(_src(cell))


def _code_only(source:str) -> str:
    "A test cell's code as it runs: no comments, no strings, no import lines (naming a function there shows nothing)."
    import io
    import tokenize
    try: tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (tokenize.TokenError, IndentationError, SyntaxError): return source
    text = {tokenize.COMMENT, tokenize.STRING} | ({tokenize.FSTRING_START, tokenize.FSTRING_MIDDLE, tokenize.FSTRING_END}
                                                   if sys.version_info >= (3, 12) else set())
    kept = [t.string for t in tokens if t.type not in text]
    code = " ".join(kept)
    return "\n".join(line for line in code.split("\n") if not re.match(r"\s*(import|from)\s", line))
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
    code = [_code_only(re.sub(r"show_doc\([^)]*\)", "", _src(d)))
            if d["cell_type"] == "code" and not _exported(d) and directives(_src(d)).get("eval") != "false" else ""
            for d in cells]
    missing = []
    for i, c in enumerate(cells):
        if not _exported(c): continue
        nxt = next((j for j in range(i + 1, len(cells)) if _exported(cells[j])), len(cells))
        prose = any(cells[j]["cell_type"] == "markdown" for j in range(i + 1, nxt))
        for full in public_definitions(_src(c)) if _public(c) else []:
            name = full.split(".")[-1]
            used = any(re.search(rf"(?<![\w]){re.escape(name)}\b", s) for s in code[i + 1:])
            if not prose: missing.append(f"{full} (no prose after it)")
            elif not used: missing.append(f"{full} (no example or assertion uses it)")
    return missing


# Deliberate exceptions: public names documented and tested elsewhere, with the reason.
_EVENT = "an event the Trainer calls: the notebook's fit with TrackingCallback runs it and asserts what it logged"
SHOWN_ELSEWHERE = {
    "10_track": {f"TrackingCallback.{e}": _EVENT for e in ("before_fit", "before_train", "after_epoch", "after_fit")},
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
    for pretend in ("# shiny is obvious", "print('shiny')", "from mlkit.core import shiny", "#| eval: false\nshiny(1)"):
        missing = undocumented(told + [{"cell_type": "code", "source": pretend}])
        assert missing == ["shiny (no example or assertion uses it)"], pretend
    hidden = [{"cell_type": "code", "source": "#| hide\n#| export\ndef shy(x): return x\n"}]
    assert undocumented(hidden) == ["shy (no prose after it)"]
    patched = [{"cell_type": "code", "source": "#| export\n@patch\ndef go(self:Thing, n): pass\n"},
               {"cell_type": "markdown", "source": "Go."}]
    assert undocumented(patched) == ["Thing.go (no example or assertion uses it)"]

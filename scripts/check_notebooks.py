"""Notebooks' committed form: git's notebook filter, and `make check-notebooks`, which judges what a commit holds.

    check_notebooks.py clean              the git clean filter: the notebook on stdin in its committed form, on stdout
    check_notebooks.py textconv FILE      `git diff`'s view of a notebook: its committed form, cell by cell
    check_notebooks.py check [NOTEBOOK...]  make check-notebooks (the working tree's NOTEBOOKs: by default nbs/'s and
                                          tests/notebooks/'s)
    check_notebooks.py fix NOTEBOOK...    rewrite NOTEBOOKs in their committed form

The committed form is what `nbdev_clean` leaves (nbdev 2.4's `clean_nb` with settings.ini's allowed_metadata_keys and
allowed_cell_metadata_keys: the kernelspec's display_name set to its name, every other notebook and cell metadata key
dropped), without outputs, execution counts or widget state, written as nbformat and nbdev write it (sorted keys,
indent 1). So nbdev_clean, the filter and a JupyterLab save followed by `git add` all give the same bytes;
tests/test_git_filter.py runs the real nbdev_clean and JupyterLab's writer against it.

`check` reads the notebooks as committed (HEAD) and staged (the index) with one `git cat-file --batch`, and fails,
naming each, on any that is not in that form (outputs, execution counts, metadata the filter strips), holds merge
conflict markers or is unmerged, or is run by `mlkit run` (nbs/experiments/, a sweeps/*.yaml `notebook:`) without a
cell tagged `parameters`. Working-tree notebooks the filter will clean are fine. Where the filter is not set up (no
`make hooks`, or no git checkout) it says so and judges the working-tree notebooks instead.
"""
import configparser
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# nbdev 2.4's clean_nb keeps these notebook and cell metadata keys, plus settings.ini's allowed_(cell_)metadata_keys.
# The filter drops `widgets` too (widget state: output, like nbstripout's default), which nbdev_clean keeps.
NBDEV_KEEP, NBDEV_KEEP_CELL = {"kernelspec", "jekyll", "jupytext", "doc", "widgets"}, {"hide_input"}
NOT_COMMITTED = {"widgets"}
PARAMETERS_TAG = "parameters"
# Where two sides of a merge disagree: git's marker lines in a cell, or the cells nbdev_merge writes (`<<<<<<< HEAD`,
# `=======`, `>>>>>>> BRANCH`, in backticks). A bare ======= line is left alone: markdown underlines headings with it.
MARKER = re.compile(r"^(`?<{7} |`?>{7} |`={7}`$)")


def settings_keys(root=ROOT) -> tuple[set, set]:
    "The notebook and cell metadata keys the committed form keeps: nbdev's, plus settings.ini's allowed ones."
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(root/"settings.ini")
    get = lambda k: set(cfg.get("DEFAULT", k, fallback="").split())
    return (NBDEV_KEEP | get("allowed_metadata_keys")) - NOT_COMMITTED, NBDEV_KEEP_CELL | get("allowed_cell_metadata_keys")


def lines(text) -> list:
    "A notebook string field as nbformat writes it: a list of lines, each but the last ending in a newline."
    return text.splitlines(keepends=True) if isinstance(text, str) else text


def clean(nb: dict, keys=None) -> dict:
    "`nb` in its committed form (changed in place, and returned)."
    keep, keep_cell = keys or settings_keys()
    for i, cell in enumerate(nb.get("cells", [])):
        if cell.get("cell_type") == "code": cell.update(outputs=[], execution_count=None)
        cell["source"] = [] if lines(cell.get("source", [])) == [""] else lines(cell.get("source", []))
        cell["metadata"] = {k: v for k, v in cell.get("metadata", {}).items() if k in keep_cell}
        # nbdev gives a cell without an id a random one; the filter must give the same bytes each time
        if "id" not in cell: cell["id"] = hashlib.sha1(f"{i}{cell['source']}".encode()).hexdigest()[:8]
    meta = nb.get("metadata", {})
    if meta.get("kernelspec", {}).get("name"): meta["kernelspec"]["display_name"] = meta["kernelspec"]["name"]
    nb["metadata"] = {k: v for k, v in meta.items() if k in keep}
    if nb.get("nbformat") == 4 and nb.get("nbformat_minor", 0) < 5: nb["nbformat_minor"] = 5
    return nb


def dumps(nb: dict) -> str:
    "A notebook as nbformat and nbdev write it."
    return json.dumps(nb, sort_keys=True, indent=1, ensure_ascii=False) + "\n"


def textconv(nb: dict) -> str:
    "The committed form read as text: the notebook's metadata, then each cell's kind, id, metadata and source."
    out = [f"# notebook metadata {json.dumps(nb.get('metadata', {}), sort_keys=True)}\n"]
    for cell in nb.get("cells", []):
        meta = f" {json.dumps(cell['metadata'], sort_keys=True)}" if cell.get("metadata") else ""
        out.append(f"\n# ---- {cell.get('cell_type')} cell {cell.get('id', '')}{meta}\n")
        out += [ln if ln.endswith("\n") else ln + "\n" for ln in cell.get("source", [])]
    return "".join(out)


# --- what `check` finds wrong in one notebook -------------------------------------------------------------------------
# Each kind of problem, with what fixes it (said once, after the notebooks that have it).
ADVICE = {
    "unreadable": ("not a readable notebook", "a merge conflict git wrote into the file (its <<<<<<< lines) or a broken "
                   "save: take one side with git ('git checkout --ours FILE' or '--theirs' during a merge) or restore the "
                   "last good one ('git restore --source=HEAD FILE'), redo your change, then 'git add' it"),
    "markers": ("conflict markers", "a merge kept both versions: in each place keep the one you want and delete the "
                "marker cells or lines (<<<<<<<, =======, >>>>>>>), save, then 'git add' the notebook and commit"),
    "parameters": ("no 'parameters' cell", "in JupyterLab select the cell that sets the run's settings, open the property "
                   "inspector (the gear icon, right sidebar) and add the tag 'parameters' under Cell Tags; save, then "
                   "'git add' the notebook"),
    "form": ("not in the committed form", "'git add --renormalize FILE' (the filter writes the committed form), then "
             "commit (or 'git commit --amend' to fix the last commit)"),
    "form-unfiltered": ("not in the committed form", f"'{Path(sys.executable).name} scripts/check_notebooks.py fix FILE...' "
                        "writes the committed form (in a git checkout, after 'make hooks', 'git add' does)"),
}


def problems(text: str, keys, need_parameters=False, committed=True) -> list[tuple[str, str]]:
    """What is wrong with the notebook `text`, as (kind, what) pairs (kinds: ADVICE's): unreadable, conflict markers,
    no parameters cell, or (`committed`) not in the committed form."""
    try: nb = json.loads(text)
    except ValueError as e: return [("unreadable", f"is not a readable notebook ({e.msg}, line {e.lineno})")]
    if not (isinstance(nb, dict) and isinstance(nb.get("cells"), list) and all(isinstance(c, dict) for c in nb["cells"])):
        return [("unreadable", "is not a notebook (no list of cells)")]
    found = []
    # by position, counting from 1: nbdev_merge's marker cells have no ids
    marked = [str(i) for i, c in enumerate(nb["cells"], 1) if any(MARKER.match(ln) for ln in lines(c.get("source", [])))]
    if marked: found.append(("markers", f"holds merge conflict markers (cell{'s' * (len(marked) > 1)} {', '.join(marked)}, "
                                        "counting from 1)"))
    if need_parameters and not any(PARAMETERS_TAG in c.get("metadata", {}).get("tags", []) for c in nb["cells"]):
        found.append(("parameters", f"has no cell tagged '{PARAMETERS_TAG}', which `mlkit run` needs for its parameters"))
    if committed and dumps(clean(json.loads(text), keys)) != text:
        code = [c for c in nb["cells"] if c.get("cell_type") == "code"]
        what = ["outputs"] * any(c.get("outputs") for c in code)
        what += ["execution counts"] * any(c.get("execution_count") is not None for c in code)
        meta = sorted(set(nb.get("metadata", {})) - keys[0])
        what += [f"metadata {', '.join(meta)}"] * bool(meta)
        cell_meta = sorted({k for c in nb["cells"] for k in c.get("metadata", {}) if k not in keys[1]})
        what += [f"cell metadata {', '.join(cell_meta)}"] * bool(cell_meta)
        spec = nb.get("metadata", {}).get("kernelspec", {})
        what += [f"kernelspec display_name {spec.get('display_name')!r} (nbdev_clean and the filter write its name)"] * bool(
            spec.get("name") and spec.get("display_name") != spec.get("name"))
        found.append(("form", f"holds {'; '.join(what or ['a layout the filter rewrites'])}"))
    return found


def working_notebooks(root=ROOT) -> list[str]:
    """The working tree's notebooks under nbs/ and tests/notebooks/ (not JupyterLab's checkpoints), found here: a path
    with a space reaches `check` whole, where make's word splitting would cut it."""
    return sorted(p.relative_to(root).as_posix() for d in ("nbs", "tests/notebooks") for p in (root/d).rglob("*.ipynb")
                  if ".ipynb_checkpoints" not in p.parts)


def read(path: Path) -> str:
    "A working-tree notebook's text; bytes that are not UTF-8 come through as U+FFFD, for `problems` to name the file."
    return path.read_bytes().decode("utf-8", "replace")


def run_notebooks(root=ROOT) -> set[str]:
    "The notebooks `mlkit run` runs here: nbs/experiments/*.ipynb (make train's EXPERIMENT) and sweeps/*.yaml's."
    found = {p.relative_to(root).as_posix() for p in (root/"nbs"/"experiments").glob("*.ipynb")}
    for spec in sorted((root/"sweeps").glob("*.y*ml")):
        try:
            import yaml
            name = yaml.safe_load(spec.read_text()).get("notebook")
        except Exception: continue  # mlkit sweep says what is wrong with a spec
        if isinstance(name, str):
            path = Path(name) if (root/name).exists() or not (spec.parent/name).exists() else spec.parent/name
            path = (root/path).resolve()
            if path.is_relative_to(root.resolve()): found.add(path.relative_to(root.resolve()).as_posix())
    return found


def git(*args, root=ROOT, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, **kw)


def committed_blobs(root=ROOT) -> tuple[dict, list]:
    "{(where, path): text} for the notebooks in HEAD and the index, read by one `git cat-file --batch`; unmerged paths."
    want, unmerged = {}, []
    for entry in git("ls-files", "-s", "-z", "--", "*.ipynb", root=root).stdout.decode().split("\0"):
        if not entry: continue
        meta, path = entry.split("\t", 1)
        mode, sha, stage = meta.split()
        if stage != "0": unmerged.append(path)
        elif mode != "120000": want[("staged", path)] = sha
    head = git("ls-tree", "-r", "-z", "HEAD", root=root)
    for entry in head.stdout.decode().split("\0") if head.returncode == 0 else []:
        if not entry: continue
        meta, path = entry.split("\t", 1)
        mode, kind, sha = meta.split()
        if path.endswith(".ipynb") and kind == "blob" and mode != "120000": want[("committed", path)] = sha
    for (where, path), sha in list(want.items()):  # unchanged since HEAD: judged once, as committed
        if where == "staged" and want.get(("committed", path)) == sha: del want[("staged", path)]
    shas = sorted(set(want.values()))
    out = git("cat-file", "--batch", root=root, input="".join(s + "\n" for s in shas).encode()).stdout
    texts, pos = {}, 0
    for sha in shas:
        header_end = out.index(b"\n", pos)
        size = int(out[pos:header_end].split()[2])
        texts[sha] = out[header_end + 1:header_end + 1 + size].decode("utf-8", "replace")
        pos = header_end + 1 + size + 1
    return {k: texts[sha] for k, sha in want.items()}, sorted(set(unmerged))


def filter_installed(root=ROOT) -> str | None:
    "None when this checkout's git filter is the one `make hooks` sets up now; else why the working tree is judged instead."
    if git("rev-parse", "--is-inside-work-tree", root=root).returncode != 0:
        return "not a git checkout, so no git filter"
    command = git("config", "filter.nbstripout.clean", root=root, text=True).stdout.strip()
    if not command: return "the git notebook filter is not set up here ('make hooks' sets it up)"
    if "mlkit-nbfilter" not in command: return "the git notebook filter is an older one ('make hooks' updates it)"
    return None


def report(errors: list[tuple[str, str, str, str]], fix_form: str) -> int:
    "Print each (path, where, kind, what) once, then each kind's advice once, naming its notebooks; 1 if there are any."
    if not errors: return 0
    for path, where, _, what in dict.fromkeys(errors): print(f"error: {path}{where} {what}", file=sys.stderr)
    for kind in ADVICE:
        paths = list(dict.fromkeys(p for p, _, k, _ in errors if k == kind))
        if kind == "form": kind = fix_form
        if paths: print(f"error: {ADVICE[kind][0]} ({', '.join(paths)}): {ADVICE[kind][1]}", file=sys.stderr)
    return 1


def check(working: list[str], root=ROOT) -> int:
    "make check-notebooks: 0 when every notebook a commit holds (or, without the filter, the working tree's) is clean."
    keys, runs = settings_keys(root), run_notebooks(root)
    errors, why_not = [], filter_installed(root)
    if why_not:
        print(f"check-notebooks: {why_not}: checking the working tree's notebooks")
        for path in working:
            if not (root/path).is_file(): continue  # a dangling link, or a path that is gone
            errors += [(path, "", k, p) for k, p in problems(read(root/path), keys, path in runs)]
        return report(errors, "form-unfiltered")
    blobs, unmerged = committed_blobs(root)
    errors += [(path, "", "markers", "is unmerged (a merge conflict)") for path in unmerged]
    for (where, path), text in sorted(blobs.items(), key=lambda kv: (kv[0][1], kv[0][0] != "staged")):
        errors += [(path, f" ({where})", k, p) for k, p in problems(text, keys, path in runs)]
    dirty = set()  # the working tree: what the filter does not remove (markers, a lost parameters cell), and a count
    for path in sorted(set(working) | {p for _, p in blobs}):
        if not (root/path).is_file(): continue  # staged, then deleted from the working tree: the index is judged
        text = read(root/path)
        errors += [(path, "", k, p) for k, p in problems(text, keys, path in runs, committed=False)]
        try:
            if dumps(clean(json.loads(text), keys)) != text: dirty.add(path)
        except (ValueError, AttributeError, TypeError): pass
    dirty -= {e[0] for e in errors}  # a notebook named as failing is not also "fine"
    if dirty: print(f"check-notebooks: {len(dirty)} working-tree notebook(s) hold outputs or metadata that the git "
                    "filter strips as they are staged (fine)")
    return report(errors, "form")


def read_arg(name: str) -> bytes:
    "The bytes of file `name` from the command line, or SystemExit with one line saying why there are none."
    try: return Path(name).read_bytes()
    except OSError as e: raise SystemExit(f"error: {name}: {e.strerror}") from None


def load(name: str) -> dict:
    "The notebook in file `name`, or SystemExit with one line saying why it is not one."
    try: nb = json.loads(read_arg(name).decode("utf-8"))
    except ValueError as e: raise SystemExit(f"error: {name} is not a notebook ({e}): not UTF-8 JSON") from None
    cells = nb.get("cells", []) if isinstance(nb, dict) else None
    if not (isinstance(cells, list) and all(isinstance(c, dict) for c in cells)):
        raise SystemExit(f"error: {name} is not a notebook (JSON, but no object with a list of cells)")
    return nb


def main(argv: list[str]) -> int:
    if argv[:1] == ["check"]: return check(argv[1:] or working_notebooks())
    if argv[:1] == ["fix"] and len(argv) > 1:
        for name in argv[1:]: Path(name).write_text(dumps(clean(load(name))), encoding="utf-8")
        return 0
    if argv == ["clean"] or (argv[:1] == ["textconv"] and len(argv) == 2):
        data = sys.stdin.buffer.read() if argv == ["clean"] else read_arg(argv[1])
        show = dumps if argv == ["clean"] else textconv
        # not a notebook (a conflicted merge's raw markers, a file that is not UTF-8): as it is, for `make check` to name
        try: data = show(clean(json.loads(data.decode("utf-8")))).encode("utf-8")
        except (ValueError, AttributeError, TypeError): pass  # UnicodeDecodeError is a ValueError
        sys.stdout.buffer.write(data)
        return 0
    print("error: usage: check_notebooks.py clean | textconv FILE | check [NOTEBOOK...] | fix NOTEBOOK...", file=sys.stderr)
    return 2


if __name__ == "__main__": sys.exit(main(sys.argv[1:]))

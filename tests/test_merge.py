"""Notebook merges with real git and the merge driver `make hooks` sets up (nbdev_merge), judged by `make check`.

Different cells of one notebook, in different places: merged, no conflict. Two new cells at the same place, or one line
edited on both sides: a conflict that git reports and `make check` names (unmerged, then nbdev's marker cells staged or
committed). Outputs: never committed, so never merged.
"""
import json

import pytest
from test_git_filter import check_notebooks, git, lab_save, make_clone

COVERS = ()  # the Makefile, scripts/check_notebooks.py and git's configuration; no notebook's code
NB = "nbs/00_core.ipynb"


@pytest.fixture
def clone(tmp_path, monkeypatch):
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path/"jupyter-data"))  # lab_save signs notebooks there
    return make_clone(tmp_path)


def edit(root, change):
    "Change notebook NB's cells with `change(cells)`, written in the committed form (the filter's)."
    path = root/NB
    nb = json.loads(path.read_text())
    change(nb["cells"])
    path.write_text(json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n")


def code_cell(id_, text):
    return {"cell_type": "code", "execution_count": None, "id": id_, "metadata": {}, "outputs": [], "source": [text]}


def branches(root, ours, theirs):
    "Commit `theirs` on branch `theirs` and `ours` on main, from the same base; then merge theirs into main."
    git("checkout", "-qb", "theirs", cwd=root)
    theirs(root)
    git("commit", "-qam", "theirs", cwd=root)
    git("checkout", "-q", "main", cwd=root)
    ours(root)
    git("commit", "-qam", "ours", cwd=root)
    return git("merge", "theirs", cwd=root, check=False)


def sources(root):
    return ["".join(c["source"]) for c in json.loads((root/NB).read_text())["cells"]]


def test_branches_adding_different_cells_merge_without_conflict(clone):
    r = branches(clone, lambda r: edit(r, lambda cells: cells.insert(2, code_cell("ours0001", "ours = 1"))),
                 lambda r: edit(r, lambda cells: cells.append(code_cell("theirs01", "theirs = 2"))))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ours = 1" in sources(clone) and "theirs = 2" in sources(clone)
    code, out = check_notebooks(clone)
    assert code == 0, out


def test_branches_adding_different_cells_at_the_same_place_conflict_and_make_check_names_it_until_resolved(clone):
    "nbdev_merge merges by position: two new cells after the same cell are one place changed on both sides."
    r = branches(clone, lambda r: edit(r, lambda cells: cells.insert(2, code_cell("ours0001", "ours = 1"))),
                 lambda r: edit(r, lambda cells: cells.insert(2, code_cell("theirs01", "theirs = 2"))))
    assert r.returncode != 0 and f"CONFLICT (content): Merge conflict in {NB}" in r.stdout, r.stdout + r.stderr
    got = sources(clone)
    assert "ours = 1" in got and "theirs = 2" in got and "`<<<<<<< HEAD`" in got and "`>>>>>>> theirs`" in got, got
    code, out = check_notebooks(clone)
    assert code != 0 and f"{NB} is unmerged (a merge conflict)" in out and f"{NB} holds merge conflict markers" in out, out
    edit(clone, lambda cells: cells.__setitem__(slice(None), [c for c in cells if not "".join(c["source"]).startswith("`")]))
    git("commit", "-qam", "resolved: both cells", cwd=clone)  # keep both: delete the marker cells, add, commit
    code, out = check_notebooks(clone)
    assert code == 0 and "ours = 1" in sources(clone) and "theirs = 2" in sources(clone), out


def _set_first_line(text):
    def change(cells):
        cell = next(c for c in cells if c["cell_type"] == "code" and c["source"])
        cell["source"][0] = text
    return lambda root: edit(root, change)


def test_one_line_edited_on_both_branches_is_a_conflict_that_make_check_names_until_it_is_resolved(clone):
    r = branches(clone, _set_first_line("ours = 1\n"), _set_first_line("theirs = 2\n"))
    assert r.returncode != 0 and f"CONFLICT (content): Merge conflict in {NB}" in r.stdout, r.stdout + r.stderr
    got = sources(clone)  # nbdev_merge's marker cells around both versions of the cell
    assert "`<<<<<<< HEAD`" in got and "`=======`" in got and "`>>>>>>> theirs`" in got, got
    code, out = check_notebooks(clone)
    assert code != 0 and f"{NB} is unmerged (a merge conflict)" in out and f"{NB} holds merge conflict markers" in out, out
    git("add", NB, cwd=clone)  # staged as it is: still named
    code, out = check_notebooks(clone)
    assert code != 0 and f"{NB} (staged) holds merge conflict markers" in out, out
    git("commit", "-qm", "merge", cwd=clone)  # git lets it be committed; make check (CI) does not
    code, out = check_notebooks(clone)
    assert code != 0 and f"{NB} (committed) holds merge conflict markers" in out, out
    edit(clone, lambda cells: cells.__setitem__(slice(None), [c for c in cells if "theirs" not in "".join(c["source"])
                                                              and not "".join(c["source"]).startswith("`")]))
    git("commit", "-qam", "resolved: ours", cwd=clone)  # resolved by hand: clean again
    code, out = check_notebooks(clone)
    assert code == 0 and any(s.startswith("ours = 1\n") for s in sources(clone)), out


def test_outputs_are_never_committed_so_never_merged(clone):
    "Both branches run the notebook (different outputs) and edit different cells: the merge has edits and no outputs."
    def run_and_edit(seed, text, where):
        def change(root):
            lab_save(root, NB, seed=seed)
            nb = json.loads((root/NB).read_text())
            cells = [c for c in nb["cells"] if c["cell_type"] == "code"]
            cells[where]["source"].append(f"\n{text}")
            (root/NB).write_text(json.dumps(nb, indent=1))
        return change
    r = branches(clone, run_and_edit(1, "ours = 1", 0), run_and_edit(2, "theirs = 2", -1))
    assert r.returncode == 0, r.stdout + r.stderr
    merged = git("show", f"HEAD:{NB}", cwd=clone)
    assert "ours = 1" in merged and "theirs = 2" in merged and '"output_type"' not in merged
    lab_save(clone, NB, seed=3)  # outputs alone are no change to commit
    assert git("diff", cwd=clone) == "" and "nothing to commit" in git("commit", "-am", "x", cwd=clone, check=False).stdout
    code, out = check_notebooks(clone)
    assert code == 0, out

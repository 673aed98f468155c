"""Fail when the docs site's configuration would not build (offline: no Quarto).

What `nbdev_docs` reads besides the notebooks: `nbs/_quarto.yml` (the site: a Quarto website whose stylesheet and
metadata files exist), `nbs/nbdev.yml` (the site's title, URL and repository, which nbdev writes from settings.ini
and must therefore say what settings.ini says), and the home page named by settings.ini's `readme_nb`.
The docs workflow itself is checked against GitHub's schema by `make check-workflows`.
"""
import configparser
import os
import shutil
import sys
import tempfile
from pathlib import Path

import yaml


def problems(root: Path) -> list[str]:
    "Each way the docs configuration under `root` is broken, as one line."
    cfg = configparser.ConfigParser()
    cfg.read(root/"settings.ini")
    s = cfg["DEFAULT"]
    nbs = root/s.get("nbs_path", "nbs")
    out = []
    quarto = nbs/"_quarto.yml"
    if not quarto.exists(): return [f"{quarto.relative_to(root)} is missing: nbdev_docs would write a default one"]
    try: q = yaml.safe_load(quarto.read_text()) or {}
    except yaml.YAMLError as e: return [f"{quarto.relative_to(root)} is not YAML: {str(e).splitlines()[0]}"]
    if not isinstance(q, dict) or (q.get("project") or {}).get("type") != "website":
        out.append(f"{quarto.relative_to(root)}: project.type must be website (nbdev builds a Quarto website)")
        q = q if isinstance(q, dict) else {}
    css = ((q.get("format") or {}).get("html") or {}).get("css")
    for f in [css] if isinstance(css, str) else css or []:
        if not (nbs/f).exists(): out.append(f"{quarto.relative_to(root)}: its stylesheet {f} is not in {nbs.name}/")
    # nbdev_docs writes sidebar.yml from the notebooks, unless settings.ini says custom_sidebar = True
    generated = set() if s.getboolean("custom_sidebar", fallback=False) else {"sidebar.yml"}
    for f in q.get("metadata-files") or []:
        if f not in generated and not (nbs/f).exists():
            out.append(f"{quarto.relative_to(root)}: its metadata file {f} is not in {nbs.name}/")
    readme_nb = s.get("readme_nb", "index.ipynb")
    if not (nbs/readme_nb).exists():
        out.append(f"settings.ini: readme_nb = {readme_nb}, and {nbs.name}/{readme_nb} does not exist")
    out += _nbdev_yml_drift(root, nbs)
    return out


def _nbdev_yml_drift(root: Path, nbs: Path) -> list[str]:
    "nbdev.yml as nbdev would write it from settings.ini (in a scratch copy), against the committed one."
    from nbdev.quarto import refresh_quarto_yml
    committed = nbs/"nbdev.yml"
    with tempfile.TemporaryDirectory() as d:
        shutil.copy2(root/"settings.ini", d)
        (Path(d)/nbs.relative_to(root)).mkdir(parents=True)
        shutil.copy2(nbs/"_quarto.yml", Path(d)/nbs.relative_to(root))
        cwd = os.getcwd()
        os.chdir(d)
        try: refresh_quarto_yml()
        finally: os.chdir(cwd)
        fresh = (Path(d)/nbs.relative_to(root)/"nbdev.yml").read_text()
    try: yaml.safe_load(fresh)
    except yaml.YAMLError as e:  # nbdev puts settings.ini's values between double quotes, unescaped
        return [f"{committed.relative_to(root)}, as nbdev writes it from settings.ini, is not YAML "
                f"({str(e).splitlines()[0]}): a double quote or backslash in its title or description?"]
    if not committed.exists():
        return [f"{committed.relative_to(root)} is missing; nbdev writes it from settings.ini (make docs): commit it"]
    if committed.read_text() != fresh:
        return [f"{committed.relative_to(root)} differs from what nbdev writes from settings.ini; run "
                "'python -c \"from nbdev.quarto import refresh_quarto_yml as r; r()\"' and commit it"]
    return []


if __name__ == "__main__":
    found = problems(Path(sys.argv[1]) if len(sys.argv) > 1 else Path.cwd())
    for p in found: print(f"error: {p}", file=sys.stderr)
    sys.exit(1 if found else 0)

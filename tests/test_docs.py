"The notebooks read as nbdev documentation: a title cell in nbdev's convention, `# title` then `> summary`."
import json
import re

from conftest import REPO


def test_every_library_notebook_opens_with_an_nbdev_title_and_summary():
    notebooks = sorted((REPO/"nbs").glob("[0-9]*.ipynb"))
    assert len(notebooks) >= 14
    for path in notebooks:
        first = json.loads(path.read_text())["cells"][0]
        source = first["source"] if isinstance(first["source"], str) else "".join(first["source"])
        # "# # core" renders as a heading "# core"; nbdev takes "# core" as the page title and "> ..." as its summary
        assert first["cell_type"] == "markdown" and re.match(r"# [^#\s][^\n]*\n\n> \S", source), (path.name, source[:60])

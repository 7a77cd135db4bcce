"""Render README.md from nbs/index.ipynb with nbconvert (`nbdev_readme` does this through Quarto).

Cells marked `#| hide` are left out and nbdev directives (`#| ...` lines) are stripped.
Run `python tools/readme.py` after editing the index notebook; the tests fail while the two differ.
"""
import re
from pathlib import Path

import nbformat
from nbconvert import MarkdownExporter

ROOT = Path(__file__).resolve().parents[1]
HEADER = '<!-- Generated from nbs/index.ipynb by `python tools/readme.py`: edit the notebook, not this file. -->\n\n'
_directive = re.compile(r'^\s*#\|\s*(.*)$')


def _visible(cell):
    directives = [m.group(1).strip() for line in cell.source.splitlines() if (m := _directive.match(line))]
    return not any(d.startswith(('hide', 'include: false', 'default_exp', 'export')) for d in directives)


def render_readme(nb_path=ROOT/'nbs'/'index.ipynb') -> str:
    "The README text for the index notebook."
    nb = nbformat.read(nb_path, as_version=4)
    nb.metadata['language_info'] = {'name': 'python'}  # fences code as python
    nb.cells = [c for c in nb.cells if c.cell_type != 'raw' and (c.cell_type == 'markdown' or _visible(c))]
    for c in nb.cells:
        if c.cell_type == 'code': c.source = '\n'.join(l for l in c.source.splitlines() if not _directive.match(l))
    body, _ = MarkdownExporter().from_notebook_node(nb)
    return HEADER + re.sub(r'\n{3,}', '\n\n', body).strip() + '\n'


if __name__ == '__main__':
    (ROOT/'README.md').write_text(render_readme())
    print('wrote README.md')

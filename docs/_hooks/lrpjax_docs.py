"""mkdocs hooks for lrpjax's docs (mkdocs.yml `hooks:`).

* ``on_files``: the page "Supported operations and layers" (operations.md), generated at build
  time from the engine's own rule table (``lrpjax.ops.markdown_table()``, the table the README
  has), so the docs cannot drift from the engine. Nothing is written into docs/.
* ``on_files``, too: the page "Other modules" (api/more.md) renders every lrpjax module that no
  API page names, so a module added or moved is documented (and can be referenced) at once.
* ``on_page_content``: the docstrings' Sphinx roles (:func:`x`, :class:`x`, :mod:`x`, ...) become
  cross-references. A qualified name (``lrpjax.``...) must resolve, or the strict build fails
  (a broken reference); a bare name links to the object of that name on the same page where
  there is one and otherwise stays code.
"""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.structure.files import File, Files

INTRO = """# Supported operations and layers

lrpjax traces every model (a Flax NNX module, a Linen module with its variables, a function
`fn(params, x)`, a `functools.partial` of one, a callable pytree) to a jaxpr and walks it with
one engine. Each operation that depends on the input and carries relevance gets its handling
from the table below, generated from the engine's own table (`lrpjax/ops.py`,
`lrpjax.ops.markdown_table()`), so it cannot drift. Anything that depends on the input and is
not listed raises, naming the primitive, the layer path and your source line;
`on_unsupported="warn"` uses its plain gradient instead, with one warning each.

Layers are seen as the operations they run: `nnx.Linear` / `nnx.Conv` (and Linen's `Dense` /
`Conv`; strided, SAME, grouped, depthwise and transposed convolutions alike) are `dot_general`
/ `conv_general_dilated` and get the composite's rule; average and sum pooling
(`nnx.avg_pool`, `flax.linen.avg_pool`, `jnp.mean`) are `reduce_window_sum` / `reduce_sum`;
max pooling is `reduce_window_max`; a residual `x + y` is `add`. `lrpjax.describe(model, x,
composite=...)` prints, for your model, which rule reached which operation.

"""

ROLE = re.compile(r":(?:mod|func|class|data|meth|attr|obj|exc):<code>([A-Za-z_][\w.]*)</code>")
HEADING_ID = re.compile(r'id="(lrpjax(?:\.\w+)+)"')


MORE = """# Other modules

Modules of lrpjax that no page above groups; rendered here so that each one is documented and
every reference to it resolves.

"""
DIRECTIVE = re.compile(r"^:::\s*(lrpjax[\w.]*)", re.MULTILINE)


def modules(package: Path) -> list[str]:
    """Every public module of the lrpjax source tree (no import): lrpjax.a, lrpjax.b.c, ...
    (not the package itself: its exports are on the pages of the modules that define them)."""
    names = []
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if len(parts) > 1 and not any(p.startswith("_") for p in parts):
            names.append(".".join(parts))
    return names


def on_files(files: Files, config) -> Files:
    import lrpjax
    from lrpjax import ops

    content = INTRO + ops.markdown_table() + "\n"
    files.append(File.generated(config, "operations.md", content=content))
    named = set()
    for page in Path(config["docs_dir"]).glob("api/*.md"):
        named.update(DIRECTIVE.findall(page.read_text()))
    rest = [m for m in modules(Path(lrpjax.__file__).parent) if m not in named]
    more = MORE + ("".join(f"::: {m}\n\n" for m in rest) if rest else
                   "Every module is on one of the pages above.\n")
    files.append(File.generated(config, "api/more.md", content=more))
    return files


def on_page_content(html: str, page, config, files) -> str:
    ids = HEADING_ID.findall(html)

    def link(match: re.Match) -> str:
        name = match.group(1)
        code = f"<code>{name}</code>"
        if name.startswith("lrpjax."):
            return f'<autoref identifier="{name}">{code}</autoref>'
        near = [i for i in ids if i.endswith("." + name)]
        if near:
            return f'<autoref identifier="{near[0]}" optional>{code}</autoref>'
        return code

    return ROLE.sub(link, html)

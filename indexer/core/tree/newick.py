"""Newick text in and out, with model ids quoted so they read back intact.

Model ids contain ``/``, ``-`` and ``.``; Newick reserves ``()[]':;,`` and whitespace, and
many readers treat ``_`` as a space in unquoted labels. Labels that are not plain
``[A-Za-z0-9]`` words are written in single quotes (a quote inside is doubled), the
standard Newick escape. Internal labels carry split support, written as a number.
"""
from __future__ import annotations

import re

from indexer.core.tree.core import Tree

_PLAIN = re.compile(r"^[A-Za-z0-9]+$")


class NewickError(ValueError):
    pass


def quote(label: str) -> str:
    if _PLAIN.match(label):
        return label
    return "'" + label.replace("'", "''") + "'"


def _fmt_len(x: float) -> str:
    return repr(float(x))


def to_newick(tree: Tree, support: bool = True, lengths: bool = True, digits: int | None = None) -> str:
    """The tree as one Newick line. ``support`` writes split support as internal labels
    (rounded to 3 decimals); ``digits`` rounds branch lengths (default: exact repr)."""
    if tree.root < 0:
        return ";"
    fmt = _fmt_len if digits is None else (lambda x: f"{x:.{digits}g}")
    out: list[str] = []
    # iterative DFS: (node, state) with state 0 = enter, 1 = leave
    stack = [(tree.root, 0)]
    while stack:
        v, state = stack.pop()
        kids = tree.children[v]
        if state == 0:
            if kids:
                out.append("(")
                stack.append((v, 1))
                for i, c in enumerate(reversed(kids)):
                    stack.append((c, 0))
                    if i < len(kids) - 1:
                        stack.append((-1, 2))  # comma marker
            else:
                out.append(quote(tree.label[v]))
                if lengths and v != tree.root:
                    out.append(":" + fmt(tree.length[v]))
        elif state == 2:
            out.append(",")
        else:
            out.append(")")
            if support and v in tree.support:
                out.append(f"{tree.support[v]:.3f}".rstrip("0").rstrip(".") or "0")
            if lengths and v != tree.root:
                out.append(":" + fmt(tree.length[v]))
    return "".join(out) + ";"


_TOKEN = re.compile(r"\s*(?:('(?:[^']|'')*')|([(),:;])|([^\s(),:;'\[\]]+)|(\[[^\]]*\]))")


def parse_newick(text: str) -> Tree:
    """Parse one Newick tree. Leaf labels become leaf names; numeric internal labels become
    support values; missing lengths are 0. O(length of text)."""
    tree = Tree(capacity=max(16, text.count(",") * 2 + 4))
    pos = 0
    n = len(text)
    current = -1  # node whose label/length is being read
    stack: list[int] = []
    expect_length = False
    done = False
    labelled: set[int] = set()  # internal nodes whose label was read
    while pos < n:
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            if text[pos:].strip() == "":
                break
            raise NewickError(f"unexpected character {text[pos]!r} at offset {pos}")
        pos = m.end()
        quoted, punct, word, comment = m.groups()
        if comment is not None:
            continue
        if done:
            if quoted or punct or word:
                raise NewickError("text after the closing ';'")
            continue
        if punct == "(":
            parent = stack[-1] if stack else -1
            v = tree.add_node(parent)
            if parent < 0:
                if tree.root >= 0:
                    raise NewickError("more than one root")
                tree.root = v
            stack.append(v)
            current = -1
        elif punct == ",":
            if not stack:
                raise NewickError("',' outside parentheses")
            current = -1
        elif punct == ")":
            if not stack:
                raise NewickError("unbalanced ')'")
            current = stack.pop()
        elif punct == ":":
            if current < 0:
                # an unnamed leaf with a length: "(,:1.0)" style
                current = _new_leaf(tree, stack, None)
            expect_length = True
            continue
        elif punct == ";":
            if stack:
                raise NewickError("unbalanced '(' before ';'")
            done = True
        else:
            token = quoted[1:-1].replace("''", "'") if quoted is not None else word
            if expect_length:
                try:
                    tree.length[current] = float(token)
                except ValueError:
                    raise NewickError(f"branch length {token!r} is not a number") from None
            elif current >= 0 and tree.children[current]:
                if current in labelled:
                    raise NewickError(f"two labels for one node near offset {pos}")
                labelled.add(current)
                try:
                    tree.support[current] = float(token)
                except ValueError:
                    pass  # a named internal node: the name is not kept
            elif current >= 0:
                raise NewickError(f"two labels for one node near offset {pos}")
            else:
                current = _new_leaf(tree, stack, token if quoted is not None else token)
        expect_length = False
    if not done:
        raise NewickError("Newick text must end with ';'")
    if tree.root < 0:
        raise NewickError("empty tree")
    for v in range(tree.n_nodes):
        if not tree.children[v] and tree.label[v] is None:
            raise NewickError("a leaf has no label")
    tree.length[tree.root] = 0.0
    return tree.reindex()


def _new_leaf(tree: Tree, stack: list[int], label: str | None) -> int:
    parent = stack[-1] if stack else -1
    try:
        v = tree.add_node(parent, 0.0, label)
    except ValueError as e:
        raise NewickError(str(e)) from None
    if parent < 0:
        if tree.root >= 0:
            raise NewickError("more than one root")
        tree.root = v
    return v

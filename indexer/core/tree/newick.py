"""Newick text in and out, with model ids quoted so they read back intact.

Model ids contain ``/``, ``-`` and ``.``; Newick reserves ``()[]':;,`` and whitespace, and
many readers treat ``_`` as a space in unquoted labels. Labels that are not plain
``[A-Za-z0-9]`` words are written in single quotes (a quote inside is doubled), the
standard Newick escape. Internal labels carry split support, written as a number.
"""
from __future__ import annotations

import re
import weakref

import numpy as np

from indexer.core.tree.core import Tree

_PLAIN = re.compile(r"^[A-Za-z0-9]+$")


class NewickError(ValueError):
    pass


def quote(label: str) -> str:
    if _PLAIN.match(label):
        return label
    return "'" + label.replace("'", "''") + "'"


def to_newick(tree: Tree, support: bool = True, lengths: bool = True, digits: int | None = None) -> str:
    """The tree as one Newick line. ``support`` writes split support as internal labels
    (rounded to 3 decimals); ``digits`` rounds branch lengths (default: exact repr).

    O(n) array operations over the tree's preorder layout (``Tree.order``, ``pos``,
    ``size``) and one join, with no Python traversal; the label and length texts are kept
    between calls (``_NodeTexts``), so a tree that changed by a few inserts formats only
    the nodes that changed. A sparse index writes its whole tree at every publish."""
    if tree.root < 0:
        return ";"
    if tree.order.shape[0] != tree.n_nodes or tree.order[0] != tree.root:
        tree = tree.copy().reindex()  # a layout not kept up (a tree built by hand): read a fresh one
    order, pos, size, parent = tree.order, tree.pos, tree.size, tree.parent
    n = order.shape[0]
    texts = _NodeTexts.of(tree)
    leaf = size[order] == 1
    if not lengths:
        edge = np.full(n, "", dtype=object)
    elif digits is None:
        edge = texts.lengths(tree)[order]
    else:
        edge = np.array([f":{x:.{digits}g}" for x in tree.length[order].tolist()], dtype=object)
    edge[0] = ""  # the root's edge is not written
    # each node opens with its label and edge (a leaf) or "(", after a "," unless it is
    # a first child (it comes right after its parent in preorder)
    opening = texts.labels(tree)[order] + edge
    opening[~leaf] = "("
    later = np.ones(n, dtype=bool)
    later[0] = False
    later[1:] = order[:-1] != parent[order[1:]]
    opening[later] = "," + opening[later]
    # an internal node closes after the last node of its subtree, inner ones first
    inner = np.flatnonzero(~leaf)
    nodes = order[inner]
    closing = ")" + edge[inner]
    if support and tree.support:
        # a supported node's place among the closings, from its preorder position: no
        # lookup table of every internal node for the few that carry support
        sv = np.fromiter(tree.support, dtype=np.int64, count=len(tree.support))
        sv = sv[size[sv] > 1]
        for v, i in zip(sv.tolist(), np.searchsorted(inner, pos[sv]).tolist()):
            closing[i] = ")" + _support_text(tree.support[v]) + edge[inner[i]]
    key = np.concatenate([2 * np.arange(n), 2 * (pos[nodes] + size[nodes] - 1) + 1])
    tie = np.concatenate([np.zeros(n, dtype=np.int64), -pos[nodes]])
    return "".join(np.concatenate([opening, closing])[np.lexsort((tie, key))].tolist()) + ";"


def _support_text(value: float) -> str:
    return f"{value:.3f}".rstrip("0").rstrip(".") or "0"


class _NodeTexts:
    """Each node's quoted label and ``":" + repr(length)``, kept per tree between calls of
    ``to_newick``: formatting 200,000 floats is most of writing a 100,000-leaf tree, and
    between two publishes only the nodes an insert touched change. A length is formatted
    again when its bits change (so -0.0 and 0.0 differ, as their reprs do); labels never
    change once set, except by replacing the whole list (then all are quoted again)."""

    _of: "weakref.WeakKeyDictionary[Tree, _NodeTexts]" = weakref.WeakKeyDictionary()

    def __init__(self):
        self._label_list: list | None = None
        self._label_text = np.empty(0, dtype=object)
        self._bits = np.empty(0, dtype=np.int64)
        self._length_text = np.empty(0, dtype=object)

    @classmethod
    def of(cls, tree: Tree) -> "_NodeTexts":
        texts = cls._of.get(tree)
        if texts is None:
            texts = cls._of[tree] = cls()
        return texts

    def labels(self, tree: Tree) -> np.ndarray:
        """Quoted labels by node id ("" for an unlabelled node)."""
        n = tree.n_nodes
        if self._label_list is not tree.label:
            self._label_list, self._label_text = tree.label, np.empty(0, dtype=object)
        done = self._label_text.shape[0]
        if done < n:
            more = np.array([quote(x) if x is not None else "" for x in tree.label[done:n]], dtype=object)
            self._label_text = np.concatenate([self._label_text, more])
        return self._label_text

    def lengths(self, tree: Tree) -> np.ndarray:
        """``":" + repr(length)`` by node id, formatting only what changed since the last call."""
        n = tree.n_nodes
        bits = tree.length[:n].view(np.int64)
        if self._bits.shape[0] < n:
            grow = n - self._bits.shape[0]
            self._bits = np.concatenate([self._bits, np.full(grow, -1, dtype=np.int64)])  # a NaN: no length has it
            self._length_text = np.concatenate([self._length_text, np.full(grow, "", dtype=object)])
        stale = np.flatnonzero(self._bits[:n] != bits)
        if stale.shape[0]:
            self._length_text[stale] = [":" + repr(x) for x in tree.length[stale].tolist()]
            self._bits[stale] = bits[stale]
        return self._length_text[:n]


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

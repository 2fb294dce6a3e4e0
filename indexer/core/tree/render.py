"""Trees as text for people (ASCII) and as nested dicts for programs (JSON). Pure."""
from __future__ import annotations

from indexer.core.tree.core import Tree


def to_ascii(tree: Tree, digits: int = 4) -> str:
    """An indented drawing, one node per line: leaves by name, internal nodes by support."""
    if tree.root < 0:
        return "(empty tree)"
    lines: list[str] = []
    stack: list[tuple[int, str, str]] = [(tree.root, "", "")]
    while stack:
        v, lead, child_lead = stack.pop()
        length = "" if v == tree.root else f" :{tree.length[v]:.{digits}g}"
        if tree.children[v]:
            sup = f" [{tree.support[v]:.2f}]" if v in tree.support else ""
            lines.append(f"{lead}+{sup}{length}")
        else:
            lines.append(f"{lead}{tree.label[v]}{length}")
        kids = tree.children[v]
        for k, c in reversed(list(enumerate(kids))):
            last = k == len(kids) - 1
            stack.append((c, child_lead + ("`-- " if last else "|-- "), child_lead + ("    " if last else "|   ")))
    return "\n".join(lines)


def to_dict(tree: Tree) -> dict:
    """{"name"?, "length", "support"?, "children"?} nested from the root (iterative)."""
    if tree.root < 0:
        return {}
    made: dict[int, dict] = {}
    for v in tree.order[::-1]:
        v = int(v)
        d: dict = {"length": 0.0 if v == tree.root else float(tree.length[v])}
        if tree.children[v]:
            if v in tree.support:
                d["support"] = float(tree.support[v])
            d["children"] = [made.pop(c) for c in tree.children[v]]
        else:
            d["name"] = tree.label[v]
        made[v] = d
    return made[tree.root]

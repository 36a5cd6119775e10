"""Read an mmpose 0.x dataset-info file (``configs/_base_/datasets/<set>.py``) without running it.

Those files are Python (``dataset_info = dict(...)``); executing one would let it run code, so the
file is parsed and only literals, ``dict(...)`` calls, lists, tuples, unary minus and ``list * int``
(``joint_weights=[1.] * 133``) are evaluated. Anything else is refused with the line number.
"""
from __future__ import annotations

import ast
from pathlib import Path


class DatasetInfoError(ValueError):
    """The file is not a plain ``dataset_info = dict(...)`` literal."""


def _value(node: ast.AST, where: str):
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, (ast.List, ast.Tuple)):
        items = [_value(e, where) for e in node.elts]
        return items if isinstance(node, ast.List) else tuple(items)
    if isinstance(node, ast.Dict):
        return {_value(k, where): _value(v, where) for k, v in zip(node.keys, node.values)}
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict" and not node.args:
        return {kw.arg: _value(kw.value, where) for kw in node.keywords}
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_value(node.operand, where)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
        left, right = _value(node.left, where), _value(node.right, where)
        if isinstance(left, list) and isinstance(right, int):
            return left * right
    raise DatasetInfoError(f"{where}:{getattr(node, 'lineno', '?')}: {type(node).__name__} is not a literal; "
                           f"expected dict(...), lists, tuples, numbers and strings only")


def read_dataset_info(path: str | Path) -> dict:
    """The ``dataset_info`` dict of an mmpose dataset-info file, evaluated from its literals."""
    path = Path(path)
    tree = ast.parse(path.read_text(), filename=str(path))
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and any(isinstance(t, ast.Name) and t.id.endswith("info")
                                                for t in stmt.targets):
            return _value(stmt.value, str(path))
    raise DatasetInfoError(f"{path}: no `dataset_info = dict(...)` assignment")


def spec_fields(info: dict) -> dict:
    """The keypoint-set fields of a dataset-info dict, in index order (0-based links)."""
    kp = info["keypoint_info"]
    order = sorted(kp)
    names = [kp[i]["name"] for i in order]
    index = {n: i for i, n in enumerate(names)}
    flip_pairs = sorted({tuple(sorted((index[kp[i]["name"]], index[kp[i]["swap"]])))
                         for i in order if kp[i].get("swap")})
    links = [info["skeleton_info"][i] for i in sorted(info["skeleton_info"])]
    return dict(
        dataset_name=info.get("dataset_name", ""),
        names=names,
        flip_pairs=[list(p) for p in flip_pairs],
        upper_body_ids=[index[kp[i]["name"]] for i in order if kp[i].get("type") == "upper"],
        lower_body_ids=[index[kp[i]["name"]] for i in order if kp[i].get("type") == "lower"],
        keypoint_colors=[list(kp[i]["color"]) for i in order],
        skeleton=[[index[a], index[b]] for a, b in (link["link"] for link in links)],
        link_colors=[list(link["color"]) for link in links],
        joint_weights=[float(w) for w in info["joint_weights"]],
        sigmas=[float(s) for s in info["sigmas"]],
    )

"""Non-dominated sets and hypervolume for 2 or 3 objectives with mixed directions: plain points, no
noise (the front of a run's records, beyond noise, is beyond_noise.py)."""

from __future__ import annotations

from collections.abc import Sequence


def as_min(point: Sequence[float], directions: Sequence[str]) -> tuple:
    """Flip maximised objectives so that smaller is better everywhere."""
    return tuple(-v if d == "maximize" else v for v, d in zip(point, directions))


def dominates(a, b, directions) -> bool:
    a, b = as_min(a, directions), as_min(b, directions)
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def pareto_front(points: Sequence[Sequence[float]], directions: Sequence[str]) -> list:
    """Indices of the non-dominated points; of several identical points, the first is kept."""
    front = []
    for i, p in enumerate(points):
        if any(dominates(q, p, directions) for j, q in enumerate(points) if j != i):
            continue
        if any(tuple(points[k]) == tuple(p) for k in front):
            continue
        front.append(i)
    return front


def hypervolume(points: Sequence[Sequence[float]], directions: Sequence[str], reference: Sequence[float]) -> float:
    """Volume dominated by `points` and bounded by `reference` (in the objectives' own units).

    Exact for 2 objectives (a sweep) and 3 (slices along the last objective).
    """
    ref = as_min(reference, directions)
    pts = [as_min(p, directions) for p in points]
    pts = [p for p in pts if all(x < r for x, r in zip(p, ref))]
    if not pts:
        return 0.0
    if len(ref) == 2:
        return _hv2(pts, ref)
    if len(ref) != 3:
        raise ValueError("hypervolume supports 2 or 3 objectives")
    zs = sorted({p[2] for p in pts}) + [ref[2]]
    total = 0.0
    for z, z_next in zip(zs, zs[1:]):
        slice_pts = [(p[0], p[1]) for p in pts if p[2] <= z]
        total += _hv2(slice_pts, ref[:2]) * (z_next - z)
    return total


def _hv2(pts, ref) -> float:
    total, best_y = 0.0, ref[1]
    for x, y in sorted(pts):
        if y < best_y:
            total += (ref[0] - x) * (best_y - y)
            best_y = y
    return total

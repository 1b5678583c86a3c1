"""``np.argsort(values)`` exactly as numpy 1.24 computes it, ties included (pure Python).

The released ReasonSeg ground truth orders polygons with ``np.argsort(areas)[::-1]`` under numpy 1.24, whose
default argsort (``kind="quicksort"``) is an introsort and not stable: polygons of equal area come out in an
order that depends on the algorithm. numpy 2 sorts small integer arrays with SIMD code that orders ties
differently, so the order is reproduced here from numpy 1.24's algorithm (``npysort/quicksort.cpp``,
``aquicksort_``; ``npysort_heapsort.h``, ``aheapsort_``):

* ranges of more than 16 elements are partitioned around the median of the first, middle and last element
  (the pivot parked next to the last), the larger part pushed on a stack, the smaller one continued;
* each push decrements a depth budget of ``2 * floor(log2(n))``; a range popped with a negative budget is
  heap-sorted instead;
* ranges of at most 16 elements are insertion-sorted (stable).

``tests/cores/evaluation/test_fidelity_eval.py`` checks it against numpy 1.24 in ``.venv-ref``.
"""

from __future__ import annotations

from collections.abc import Sequence

SMALL_QUICKSORT = 15


def _heapsort(values: Sequence[int], order: list[int], start: int, n: int) -> None:
    """numpy's ``aheapsort_`` on ``order[start:start + n]`` (1-based heap indexing)."""

    def at(i: int) -> int:  # a[i] with the heap's 1-based offset
        return order[start + i - 1]

    def put(i: int, value: int) -> None:
        order[start + i - 1] = value

    def sift(top: int, item: int, size: int) -> None:
        i, j = top, top * 2
        while j <= size:
            if j < size and values[at(j)] < values[at(j + 1)]:
                j += 1
            if values[item] < values[at(j)]:
                put(i, at(j))
                i, j = j, j * 2
            else:
                break
        put(i, item)

    for top in range(n >> 1, 0, -1):
        sift(top, at(top), n)
    size = n
    while size > 1:
        item = at(size)
        put(size, at(1))
        size -= 1
        sift(1, item, size)


def argsort_numpy124(values: Sequence[int]) -> list[int]:
    """The indices ``np.argsort(values)`` gives under numpy 1.24 for integer values (e.g. polygon areas)."""
    n = len(values)
    order = list(range(n))
    if n < 2:
        return order
    left, right = 0, n - 1
    stack: list[tuple[int, int, int]] = []
    depth = 2 * (n.bit_length() - 1)
    while True:
        if depth < 0:
            _heapsort(values, order, left, right - left + 1)
        else:
            while right - left > SMALL_QUICKSORT:
                mid = left + ((right - left) >> 1)
                if values[order[mid]] < values[order[left]]:
                    order[mid], order[left] = order[left], order[mid]
                if values[order[right]] < values[order[mid]]:
                    order[right], order[mid] = order[mid], order[right]
                if values[order[mid]] < values[order[left]]:
                    order[mid], order[left] = order[left], order[mid]
                pivot = values[order[mid]]
                i, j = left, right - 1
                order[mid], order[j] = order[j], order[mid]
                while True:
                    i += 1
                    while values[order[i]] < pivot:
                        i += 1
                    j -= 1
                    while pivot < values[order[j]]:
                        j -= 1
                    if i >= j:
                        break
                    order[i], order[j] = order[j], order[i]
                order[i], order[right - 1] = order[right - 1], order[i]
                depth -= 1
                if i - left < right - i:
                    stack.append((i + 1, right, depth))
                    right = i - 1
                else:
                    stack.append((left, i - 1, depth))
                    left = i + 1
            for k in range(left + 1, right + 1):
                item = order[k]
                value = values[item]
                m = k
                while m > left and value < values[order[m - 1]]:
                    order[m] = order[m - 1]
                    m -= 1
                order[m] = item
        if not stack:
            return order
        left, right, depth = stack.pop()

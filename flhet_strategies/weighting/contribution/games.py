"""Coalition utilities: a memoized, counted view of a cooperative game.

Shapley estimators call a :class:`CoalitionUtility`, which accepts masks, batches of
masks or player iterables, memoizes values and counts evaluations (the budget unit of
every estimator). See docs/contribution.md.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Optional, Union

import numpy as np

BatchValueFunction = Callable[[np.ndarray], np.ndarray]
ChainValueFunction = Callable[[np.ndarray], np.ndarray]
Coalition = Union[np.ndarray, Iterable[int]]

__all__ = ["CoalitionUtility", "coalition_mask", "prefix_masks"]


def coalition_mask(coalition: Coalition, n_players: int) -> np.ndarray:
    """Return a coalition as a boolean mask of shape ``(n_players,)``.

    Parameters
    ----------
    coalition : np.ndarray or iterable of int
        Either a boolean mask of length ``n_players`` or the indices of the
        members (a ``frozenset``, ``list``, ``tuple``, integer array, ...).
    n_players : int
        Number of players in the game.

    Returns
    -------
    np.ndarray
        Boolean mask; ``mask[i]`` is True when player ``i`` is a member.

    Raises
    ------
    ValueError
        If a boolean mask has the wrong length or an index is out of range.
    """
    if isinstance(coalition, np.ndarray) and coalition.dtype == bool:
        if coalition.shape != (n_players,):
            raise ValueError(
                f"A coalition mask must have shape ({n_players},), got {coalition.shape}."
            )
        return coalition
    members = np.fromiter((int(i) for i in coalition), dtype=np.int64)
    if members.size and (members.min() < 0 or members.max() >= n_players):
        raise ValueError(
            f"Player indices must lie in [0, {n_players - 1}], got {sorted(members.tolist())}."
        )
    mask = np.zeros(n_players, dtype=bool)
    mask[members] = True
    return mask


def prefix_masks(order: np.ndarray) -> np.ndarray:
    """Return the ``n + 1`` prefix coalitions of a permutation as masks.

    Parameters
    ----------
    order : np.ndarray
        A permutation of ``0..n-1`` (shape ``(n,)``).

    Returns
    -------
    np.ndarray
        Boolean array of shape ``(n + 1, n)``; row ``k`` holds the first ``k``
        players of ``order`` (row 0 is the empty coalition, row ``n`` the grand
        coalition).
    """
    n_players = order.shape[0]
    position = np.empty(n_players, dtype=np.int64)
    position[order] = np.arange(n_players)
    return np.arange(n_players + 1)[:, None] > position[None, :]


class CoalitionUtility:
    """Memoized, counted utility ``v(S)`` of a cooperative game.

    Parameters
    ----------
    batch_value_fn : callable
        ``batch_value_fn(masks) -> values``: takes a boolean array of shape
        ``(m, n_players)`` and returns ``m`` float values, one per row.
    n_players : int
        Number of players (clients) in the game; at least 1.
    chain_value_fn : callable, optional
        ``chain_value_fn(order) -> values``: values of the ``n + 1`` prefix
        coalitions of the permutation ``order`` (empty first, grand coalition
        last). Optional fast path for permutation estimators, e.g. running sums
        of client predictions; must agree with ``batch_value_fn``.
    memoize : bool, default=True
        Cache every computed value, keyed by coalition. Turn off for very long
        runs (e.g. a reference estimate from millions of coalitions) to keep
        memory flat; evaluations are then counted every time.

    Attributes
    ----------
    n_players : int
        Number of players.
    n_evaluations : int
        Coalitions whose value was computed so far (cache misses); the budget
        unit of every estimator.

    Examples
    --------
    >>> import numpy as np
    >>> weights = np.array([1.0, 2.0, 3.0])
    >>> utility = CoalitionUtility(lambda masks: masks @ weights, n_players=3)
    >>> utility(frozenset({0, 2}))
    4.0
    >>> utility.n_evaluations
    1
    """

    def __init__(
        self,
        batch_value_fn: BatchValueFunction,
        n_players: int,
        *,
        chain_value_fn: Optional[ChainValueFunction] = None,
        memoize: bool = True,
    ) -> None:
        if not callable(batch_value_fn):
            raise TypeError("batch_value_fn must be callable: masks (m, n) bool -> values (m,).")
        if int(n_players) < 1:
            raise ValueError(f"n_players must be at least 1, got {n_players}.")
        self.n_players = int(n_players)
        self._batch_value_fn = batch_value_fn
        self._chain_value_fn = chain_value_fn
        self._memoize = bool(memoize)
        self._cache: dict[bytes, float] = {}
        self.n_evaluations = 0

    @classmethod
    def from_set_function(
        cls, set_fn: Callable[[frozenset[int]], float], n_players: int, *, memoize: bool = True
    ) -> "CoalitionUtility":
        """Build a utility from a function on ``frozenset`` coalitions.

        Parameters
        ----------
        set_fn : callable
            ``set_fn(frozenset_of_player_indices) -> float``.
        n_players : int
            Number of players.
        memoize : bool, default=True
            See :class:`CoalitionUtility`.

        Returns
        -------
        CoalitionUtility
            A utility that calls ``set_fn`` once per uncached coalition.
        """

        def batch_value_fn(masks: np.ndarray) -> np.ndarray:
            return np.array(
                [float(set_fn(frozenset(np.flatnonzero(row).tolist()))) for row in masks],
                dtype=np.float64,
            )

        return cls(batch_value_fn, n_players, memoize=memoize)

    # ------------------------------------------------------------------ calls
    def __call__(self, coalition: Coalition) -> float:
        """Return ``v(S)`` for one coalition (mask or iterable of indices)."""
        mask = coalition_mask(coalition, self.n_players)
        return float(self.evaluate(mask[None, :])[0])

    def evaluate(self, masks: np.ndarray, *, store: bool = True) -> np.ndarray:
        """Return the values of a batch of coalitions.

        Parameters
        ----------
        masks : np.ndarray
            Boolean array of shape ``(m, n_players)``.
        store : bool, default=True
            Store newly computed values in the cache (ignored when the utility
            does not memoize). Cached values are always reused.

        Returns
        -------
        np.ndarray
            Float64 array of shape ``(m,)``.
        """
        masks = self._check_masks(masks)
        if not self._memoize:
            return self._compute(masks)
        keys = self._keys(masks)
        values = np.empty(len(keys), dtype=np.float64)
        missing: dict[bytes, list[int]] = {}
        for row, key in enumerate(keys):
            cached = self._cache.get(key)
            if cached is None:
                missing.setdefault(key, []).append(row)
            else:
                values[row] = cached
        if missing:
            first_rows = [rows[0] for rows in missing.values()]
            computed = self._compute(masks[first_rows])
            for (key, rows), value in zip(missing.items(), computed):
                values[rows] = value
                if store:
                    self._cache[key] = float(value)
        return values

    def evaluate_chain(self, order: np.ndarray) -> np.ndarray:
        """Return the values of the ``n + 1`` prefix coalitions of a permutation.

        Uses ``chain_value_fn`` when given (only cache misses are counted),
        otherwise :meth:`evaluate` on the prefix masks.

        Parameters
        ----------
        order : np.ndarray
            A permutation of ``0..n_players-1``.

        Returns
        -------
        np.ndarray
            Float64 array of shape ``(n_players + 1,)``: ``v(∅), v({order[0]}),
            ..., v(N)``.
        """
        order = np.asarray(order, dtype=np.int64)
        if order.shape != (self.n_players,) or not np.array_equal(
            np.sort(order), np.arange(self.n_players)
        ):
            raise ValueError(f"order must be a permutation of 0..{self.n_players - 1}.")
        masks = prefix_masks(order)
        if self._chain_value_fn is None:
            return self.evaluate(masks)
        if not self._memoize:
            self.n_evaluations += masks.shape[0]
            return self._call_chain(order)
        keys = self._keys(masks)
        cached = [self._cache.get(key) for key in keys]
        n_missing = sum(value is None for value in cached)
        if n_missing == 0:
            return np.array(cached, dtype=np.float64)
        values = self._call_chain(order)
        self.n_evaluations += n_missing
        for key, value, old in zip(keys, values, cached):
            if old is None:
                self._cache[key] = float(value)
        return values

    def cost(self, masks: np.ndarray) -> int:
        """Number of evaluations that :meth:`evaluate` on ``masks`` would use now.

        Parameters
        ----------
        masks : np.ndarray
            Boolean array of shape ``(m, n_players)``.

        Returns
        -------
        int
            Distinct coalitions among ``masks`` that are not cached (all rows
            when the utility does not memoize).
        """
        masks = self._check_masks(masks)
        if not self._memoize:
            return masks.shape[0]
        return len({key for key in self._keys(masks) if key not in self._cache})

    @property
    def empty_value(self) -> float:
        """``v(∅)``, the value of the empty coalition."""
        return self(np.zeros(self.n_players, dtype=bool))

    @property
    def grand_value(self) -> float:
        """``v(N)``, the value of the grand coalition of all players."""
        return self(np.ones(self.n_players, dtype=bool))

    # ---------------------------------------------------------------- helpers
    def _check_masks(self, masks: np.ndarray) -> np.ndarray:
        masks = np.asarray(masks)
        if masks.ndim != 2 or masks.shape[1] != self.n_players:
            raise ValueError(
                f"masks must have shape (m, {self.n_players}), got {masks.shape}."
            )
        if masks.dtype != bool:
            if not np.isin(masks, (0, 1)).all():
                raise ValueError("masks must be boolean (or 0/1) arrays.")
            masks = masks.astype(bool)
        return masks

    def _keys(self, masks: np.ndarray) -> list[bytes]:
        packed = np.packbits(masks, axis=1)
        return [row.tobytes() for row in packed]

    def _compute(self, masks: np.ndarray) -> np.ndarray:
        values = np.asarray(self._batch_value_fn(masks), dtype=np.float64).reshape(-1)
        if values.shape[0] != masks.shape[0]:
            raise ValueError(
                f"The value function returned {values.shape[0]} values for "
                f"{masks.shape[0]} coalitions."
            )
        if not np.isfinite(values).all():
            raise ValueError("The value function returned NaN or infinite values.")
        self.n_evaluations += masks.shape[0]
        return values

    def _call_chain(self, order: np.ndarray) -> np.ndarray:
        values = np.asarray(self._chain_value_fn(order), dtype=np.float64).reshape(-1)
        if values.shape[0] != self.n_players + 1:
            raise ValueError(
                f"chain_value_fn must return {self.n_players + 1} values, got {values.shape[0]}."
            )
        if not np.isfinite(values).all():
            raise ValueError("chain_value_fn returned NaN or infinite values.")
        return values

"""The balancer protocol, its shared bookkeeping and the registry of strategies.

See the package docstring for the structures and their costs."""

from __future__ import annotations

import functools
import math
import os
import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import ClassVar, Protocol

_NO_BACKEND = "no eligible backend"


class Target(Protocol):
    """What a balancer sees of a backend. The pool passes its own runtime objects."""

    @property
    def id(self) -> str: ...

    @property
    def weight(self) -> float:
        """Effective weight, > 0; fractional while a slow-start ramp is in progress."""
        ...

    @property
    def active(self) -> int:
        """Connections currently leased to the app; live, read at pick time."""
        ...


# Weights are honoured exactly between these bounds and clamped outside them:
# enough range for any real configuration, and it keeps 1/weight, the
# fixed-point units and their sums finite (no inf or nan can reach a heap or
# a float conversion).
_MIN_WEIGHT = 2.0**-32
_MAX_WEIGHT = 2.0**32


def _clamp(weight: float) -> float:
    return min(max(weight, _MIN_WEIGHT), _MAX_WEIGHT)


def _check_weight(target: Target) -> float:
    """Read the weight once, rejecting values that would break the arithmetic."""
    w = float(target.weight)
    # A zero, negative, inf or nan weight would give infinite periods or a
    # corrupt sum tree; failing loudly on add beats a skewed or crashing pick().
    if not (w > 0.0 and math.isfinite(w)):
        raise ValueError(f"target {target.id!r} has invalid weight {w!r}; must be finite and > 0")
    return w


def _check_all(targets: Sequence[Target]) -> None:
    """Validate a whole ``update()`` list first, so a bad one leaves the old set in place."""
    seen: set[str] = set()
    for t in targets:
        _check_weight(t)
        if t.id in seen:
            raise ValueError(f"target id {t.id!r} appears twice")
        seen.add(t.id)


def _target_id(target: object) -> str | None:
    if isinstance(target, str):
        return target
    tid = getattr(target, "id", None)
    return tid if isinstance(tid, str) else None


def _recording_update(
    update: Callable[[Balancer, Sequence[Target]], None],
) -> Callable[[Balancer, Sequence[Target]], None]:
    """Wrap a custom ``update()`` so the base class knows the members it was given."""

    @functools.wraps(update)
    def wrapper(self: Balancer, targets: Sequence[Target]) -> None:
        targets = list(targets)
        update(self, targets)
        # Recorded only after the subclass accepted the list, so a rejected
        # update leaves the recorded members as they were.
        self._members = {t.id: t for t in targets}

    return wrapper


class Balancer(ABC):
    """Chooses one target from the eligible set it has been told about.

    Built-in strategies implement ``add``/``remove``/``reweight`` in O(log n). A
    custom subclass may implement only ``update()`` and ``pick()``; the defaults
    below then rebuild through ``update()``, which costs O(n) per change. (A
    subclass that overrides ``add``/``remove`` too should also override
    ``__len__`` and ``__contains__``: the base class only sees ``update()``.)
    """

    name: ClassVar[str]
    requires_key: ClassVar[bool] = False
    # True for classes that keep ``_members`` themselves; for the others the
    # base class wraps ``update()`` to record the members it receives.
    _tracks_members: ClassVar[bool] = False

    def __init__(self, *, rng: random.Random | None = None) -> None:
        # Seed explicitly from the OS so two pools created in the same process
        # (or forked processes) never share a sequence.
        self._rng = rng if rng is not None else random.Random(os.urandom(16))
        # id -> target, in insertion order: the membership every strategy
        # answers len() and ``in`` from.
        self._members: dict[str, Target] = {}

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("update")
        if own is not None and not cls._tracks_members:
            # setattr: mypy refuses assignment to a method.
            setattr(cls, "update", _recording_update(own))  # noqa: B010

    @abstractmethod
    def update(self, targets: Sequence[Target]) -> None:
        """Replace the eligible set: the same as removing every member, then adding each target."""

    @abstractmethod
    def pick(self, key: str | None = None) -> Target:
        """Return one target; ``LookupError('no eligible backend')`` if there is none."""

    def add(self, target: Target) -> None:
        """Add one target. ``ValueError`` on a duplicate id or an invalid weight.

        This default rebuilds through ``update()``: O(n). Built-ins are O(log n).
        """
        _check_weight(target)
        if target.id in self._members:
            raise ValueError(f"target id {target.id!r} is already a member")
        self.update([*self._members.values(), target])

    def remove(self, target: Target) -> None:
        """Remove the member with ``target.id``; ``KeyError`` if there is none.

        This default rebuilds through ``update()``: O(n). Built-ins are O(log n).
        """
        if target.id not in self._members:
            raise KeyError(target.id)
        self.update([t for tid, t in self._members.items() if tid != target.id])

    def reweight(self, target: Target) -> None:
        """Take note that ``target.weight`` changed; ``KeyError`` if it is not a member.

        This default rebuilds through ``update()``: O(n). Built-ins are O(log n).
        """
        if target.id not in self._members:
            raise KeyError(target.id)
        _check_weight(target)
        self.update([target if tid == target.id else t for tid, t in self._members.items()])

    def __len__(self) -> int:
        return len(self._members)

    def __contains__(self, target: object) -> bool:
        """Membership by id: a target object or the id string itself."""
        tid = _target_id(target)
        return tid is not None and tid in self._members

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} targets={len(self._members)}>"


class _Incremental(Balancer):
    """Shared bookkeeping for the built-ins: validation, ``_members``, ``update()``."""

    _tracks_members = True

    def add(self, target: Target) -> None:
        weight = _check_weight(target)
        if target.id in self._members:
            raise ValueError(f"target id {target.id!r} is already a member")
        self._insert(target, weight)
        self._members[target.id] = target

    def remove(self, target: Target) -> None:
        tid = target.id
        if tid not in self._members:
            raise KeyError(tid)
        self._discard(tid)
        del self._members[tid]

    def reweight(self, target: Target) -> None:
        tid = target.id
        if tid not in self._members:
            raise KeyError(tid)
        weight = _check_weight(target)
        self._reweigh(target, weight)
        # The pool may hand over a fresh object for the same backend; picks
        # return the latest one.
        self._members[tid] = target

    def update(self, targets: Sequence[Target]) -> None:
        targets = list(targets)
        _check_all(targets)
        self._members = {}
        self._clear()
        for t in targets:
            self.add(t)

    @abstractmethod
    def _insert(self, target: Target, weight: float) -> None: ...

    @abstractmethod
    def _discard(self, tid: str) -> None: ...

    @abstractmethod
    def _reweigh(self, target: Target, weight: float) -> None: ...

    @abstractmethod
    def _clear(self) -> None: ...


BALANCERS: dict[str, type[Balancer]] = {}


def register_balancer(cls: type[Balancer]) -> type[Balancer]:
    """Register ``cls`` under ``cls.name``; usable as a class decorator."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"{cls.__qualname__} must define a non-empty class attribute 'name'")
    if name in BALANCERS:
        raise ValueError(
            f"load balancer name {name!r} is already registered by {BALANCERS[name].__qualname__}"
        )
    BALANCERS[name] = cls
    return cls


def balancer_names() -> list[str]:
    """Registered balancer names, sorted."""
    return sorted(BALANCERS)


def create_balancer(name: str, *, rng: random.Random | None = None) -> Balancer:
    """Instantiate the balancer registered as ``name``."""
    try:
        cls = BALANCERS[name]
    except KeyError:
        raise ValueError(
            f"unknown load_balancing {name!r}; choose one of: {', '.join(balancer_names())}"
        ) from None
    return cls(rng=rng)

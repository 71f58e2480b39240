"""Audit of server-side objects: nothing reachable from them holds a Paillier private key.

Shared by the secure-consensus and secure-FedAvg tests of both Flower API faces.
"""

from __future__ import annotations

import types

import phe

from flhet_strategies.privacy.paillier.keys import KeyHolder


def reachable(root: object) -> list:
    """Every object reachable from ``root`` through attributes and containers.

    Modules are not followed: they are the process's global state, not what the object
    holds (Flower's ``RdpAccountant`` keeps a module reference, through which
    ``sys.modules`` and so every object of the test process would be "reachable").
    """
    found, stack, seen = [], [root], set()
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, (str, bytes, int, float, bool, type(None),
                                               types.ModuleType)):
            continue
        seen.add(id(obj))
        found.append(obj)
        if isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            stack.extend(obj)
        if isinstance(obj, type):
            continue
        if hasattr(obj, "__dict__"):
            stack.extend(vars(obj).values())
        for slot in getattr(type(obj), "__slots__", ()):
            if hasattr(obj, slot):
                stack.append(getattr(obj, slot))
    return found


def assert_holds_no_private_key(strategy: object, holder: KeyHolder) -> None:
    """``strategy`` reaches a public key but no private key, key holder or key prime."""
    objects = reachable(strategy)
    assert any(isinstance(obj, phe.PaillierPublicKey) for obj in objects)
    assert not any(isinstance(obj, (phe.PaillierPrivateKey, KeyHolder)) for obj in objects)
    secrets = {holder._private_key.p, holder._private_key.q}
    numbers = [v for obj in objects if hasattr(obj, "__dict__") for v in vars(obj).values()
               if isinstance(v, int)]
    assert not secrets & set(numbers)

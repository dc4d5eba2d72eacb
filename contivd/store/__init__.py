"""
Cluster state: the store API (L{base}), its etcd and in-memory
implementations, and the watcher that never loses an event.
"""

from contivd.store.base import (  # noqa: F401
    ACTIONS,
    CREATE,
    DELETE,
    EXPIRE,
    UPDATE,
    CompareFailed,
    Event,
    IndexCleared,
    KeyExists,
    KeyMissing,
    Listing,
    Node,
    Store,
    StoreError,
    StoreUnavailable,
)

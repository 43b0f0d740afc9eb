"""An index on disk: a catalogue, feature shards and what is derived from them, all written atomically.

    store.py          one committed state of an index folder, and the folder's layout
    catalogue.py      the catalogue in SQLite: settings, and where every photo's features are
    shards.py         HDF5 feature shards: writing them, reading features back
    derived.py        the learned parts (whitening, trained vector index) and each shard's derived arrays
    derived_files.py  where those are kept, and reading them back
    lock.py           one writer per index
"""

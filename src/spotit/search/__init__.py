"""From a query to a ranking: shortlist, verify, re-rank, and say whether each result shows the object.

    matching.py   descriptor matching between two photos
    verify.py     spatial verification: one sound geometric transform, or none
    localise.py   where a verified object lies in a gallery photo
    rerank.py     verification, query expansion, hubness reduction and match hints fused into one score
    verdict.py    yes / maybe / no, with a probability
    ranking.py    scores to rankings, and the rank-list file format
    scope.py      a part of the gallery to search (folder, dates taken)
    snapshot.py   one committed state as searches hold it: its arrays and vector indexes, loaded once
    searcher.py   searching a snapshot with each method

The shortlists' vector index (spotit/vectors.py) lies below: the writer builds it, searches read it.
"""

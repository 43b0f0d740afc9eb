"""From a query to a ranking: shortlist, verify, re-rank, and say whether each result shows the object.

    vectors.py    the shortlists: regions (exact in memory, or faiss IVF-PQ at scale), the cnn method's vectors
    matching.py   descriptor matching between two photos
    verify.py     spatial verification: one sound geometric transform, or none
    localise.py   where a verified object lies in a gallery photo
    rerank.py     verification, query expansion and hubness reduction fused into one score
    verdict.py    yes / maybe / no, with a probability
    ranking.py    scores to rankings, and the rank-list file format
    scope.py      a part of the gallery to search (folder, dates taken)
    searcher.py   searching one committed state of an index with each method
"""

"""Measuring quality and speed, apart from extraction and search, by each benchmark's published protocol.

    datasets.py  benchmark layouts: gallery, queries, boxes, ground truth
    metrics.py   AP (trapezoids), P@k, UKBench's N-S score
    evaluate.py  `spotit eval`: index a benchmark, run its queries, measure
    clutter.py   `spotit bench make-clutter`: boxed-query sets with placements
    scale.py     `spotit bench scale`: real queries among simulated distractors
"""

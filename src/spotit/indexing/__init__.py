"""Keeping an index up to date with its gallery: the one writer.

    lifecycle.py  create, open, rebuild an index folder, add a method, re-point a moved gallery
    extract.py    one photo: load it, note its stamp and date, extract its features
    updater.py    extract new and changed photos and commit them in shards
    watch.py      follow a gallery's file events and update after each burst
"""

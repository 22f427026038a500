"""The per-entry hot path: one walk of a tree, its tar headers, one read fanned out to every format.

``tree`` walks a root filesystem into canonical entries, ``tarwriter`` makes their headers and
the writers that hash and compress, ``feed`` reads the tree once for every format. Compiled
together with mypyc (setup.py); imports nothing of dualbuild but ``errors``.
"""

"""The build: a plan's stages run with buildah into the final tree and its image config.

Owns buildah (buildah), the bases a stage starts from (bases, tarballs), the file steps done on
a mounted root (filesteps), the step cache (cache) and the stage runner (stages). Hands the
final tree to whoever writes it; never writes an output format.
"""

"""The data half of ``score``: which model scores what, the cached scores, the scored file.

- ``spec``    scoring kinds, their flags, ModelIdentity (the trainer floor may import it)
- ``cache``   the per-model, per-text score store
- ``scores``  the texts to score, the columns and margins assembled from scores, the output file
"""

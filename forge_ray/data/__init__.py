"""Mid-training data (daVinci-Dev): pull requests and environment episodes -> packed shards.

Reading order: ``schema`` (the PR record), ``sources`` (git, releases, parquet), ``filters``,
``enhance`` (model-written summaries), ``patch`` and ``render`` (the two sample formats and
their replay check), ``envnative`` (SWE episodes as text), ``decontam`` (evaluation overlap,
near-duplicates), ``pack`` (fixed-length sequences), ``build`` (the Ray Data pipeline).
"""

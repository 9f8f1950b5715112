"""Downstream evaluations (spec section 8): finetune, linear probe, retrieval.

Library pieces under the scripts ``train/finetune.py``, ``train/linear_probe.py`` and
``train/retrieval.py``:

- :mod:`~dali_fame.eval.config`: the evaluation config schema and the paper's defaults;
- :mod:`~dali_fame.eval.finetune`: the finetune / linear-probe run (the shared training loop,
  test passes, results);
- :mod:`~dali_fame.eval.weights`: reading checkpoints, key accounting, the frozen-backbone check;
- :mod:`~dali_fame.eval.classify`: the classifier (dropout + FC, frozen / L2 features for the probe);
- :mod:`~dali_fame.eval.inference`: normalisation, the 10-clip test pass, gathering across processes;
- :mod:`~dali_fame.eval.metrics`: top-k, per-class accuracy, confusion matrix figure;
- :mod:`~dali_fame.eval.retrieval`: centring, cosine neighbours, recall@k;
- :mod:`~dali_fame.eval.results`: results.json and the one-line markdown row.
"""

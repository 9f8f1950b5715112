"""The background-bias benchmark (issue #13): does a pretraining method learn motion or scenes?

- :mod:`dali_fame.bias.world`: the synthetic world (motion classes on scenes, six sets).
- :mod:`dali_fame.bias.evaluate`: the metrics of one encoder on a world (probes, contrasted
  accuracy, retrieval) and their chance levels.
- :mod:`dali_fame.bias.bench`: ``dali-fame bias-bench --config configs/bias/cpu.yaml``, which
  pretrains every (method, seed), trains the supervised references, evaluates each encoder and
  writes the results through :mod:`dali_fame.bias.report` (bias.json, bias.md, PNG plots).

Nothing heavy is imported here.
"""

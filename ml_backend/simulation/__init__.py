"""Pool-based active-learning simulator that runs the product's own path, with a simulated annotator.

Each (strategy, seed) run replays what a Label Studio project goes through:

1. version 0 is untrained: the queue is the product's cold-start order (``ranking.rank_version``: coverage of the
   pool's clusters); ``random`` serves tasks in random order instead (LS's default sampling);
2. the annotator labels the next ``lag`` tasks of the queue (the labels that arrive before the next version);
3. the worker's training step runs (``training.decide_next``: train on 80 %, fair promotion test against the
   served version, refit on every label; or an exploration version while no model can be trained); a promoted
   version re-orders the pool exactly as the worker's re-score does (batch-aware front, stored order); a rejected
   one leaves the queue as it was;
4. every ``batch`` labels a round is recorded: the accuracy of the **served** version on a held-out test split
   (what pre-annotates and orders the queue), the accuracy of the newest fit, whether it was promoted, and how many
   classes have been labelled.

The annotator reveals the true label. Embeddings are computed once per dataset with the frozen encoder and
cached as ``.npy`` in ``<out>/embeddings``. The baseline "full-data accuracy" is a head trained on the whole
training pool with the same seeds. Outputs in ``--out``: ``simulation.json`` and ``simulation.csv`` (per round),
``summary.md`` (labels to reach 90 % / 95 % of full-data accuracy, the worst round against random, labels until
every class was seen, AULC) and ``learning_curves.png`` when matplotlib is installed (``pip install '.[bench]'``).

Strategies: ``random``; ``default`` (the dataset's default model config, exactly what the product serves);
``hybrid`` (the default with equal weights on uncertainty, novelty and density); an acquisition function name
(``bald``, ``margin``, ...: the default pipeline with that function); each may be followed by modifiers
(``loop.MODIFIERS``): ``<name>+topk`` for the same without the batch-aware front (plain top-k, the behaviour
before it existed), ``+badge``, ``+power``, ``+laplace``.

Run it as ``ml-backend simulate ...`` or ``python -m ml_backend.simulation ...`` (``--help`` lists the options).

- ``loop``: settings, datasets turned into features, one run of the product's path, the driver.
- ``report``: summaries (labels to a target, worst round against random, AULC), the table and the plot.
- ``cli``: the ``simulate`` command.  ``datasets``: the real datasets shipped in packages, and your own.
"""

"""Everything that imports torch or transformers lives in this package (and only here).

- ``encoders``: the Encoder interface and the shared helpers (dropout switching, weight resolution).
- ``text``: Hugging Face BERT-family encoders.  ``image``: EfficientNet-Lite / torchvision CNN backbones.
- ``head``: the MC-dropout classification head and its training.
- ``classifier``: encoder + head, the model adapter (``embed``, ``predict_proba``, ``fit``).
- ``pool``: loads each encoder once per process.
"""

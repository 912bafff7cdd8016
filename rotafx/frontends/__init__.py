"""Frontends: each reads a model into an :class:`~rotafx.layers.OpGraph`, one record per op, which
:func:`~rotafx.layers.group_layers` turns into a profile.

* :mod:`.pytorch`: ``torch.export`` and the fx graph (``ModelProfile.from_pytorch``, the compiler backend);
* :mod:`.onnx`: ONNX graphs (``ModelProfile.from_onnx``), and per-stage ONNX export;
* :mod:`.keras`: Keras 3 Sequential and functional models (``ModelProfile.from_tensorflow``).

Nothing here imports onnx or tensorflow until a model of theirs is read.
"""

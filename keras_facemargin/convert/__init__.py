"""Converters from other frameworks' files to this package's Keras models, without those frameworks.

* :mod:`~keras_facemargin.convert.insightface`: insightface IResNet / MobileFaceNet ``.onnx`` /
  ``.pth`` files -> Keras backbones (`convert_insightface`, `read_insightface`, the state-dict
  -> Keras layer mapping);
* :mod:`~keras_facemargin.convert.insightface_onnx`: an insightface ONNX graph -> its state dict
  (`onnx_to_state_dict`);
* :mod:`~keras_facemargin.convert.onnx_graph`: an untrusted ONNX model, loaded within caps and
  read as a data-flow graph;
* :mod:`~keras_facemargin.convert.pth`: ``torch.save`` files read (and written) without torch
  (`read_torch_checkpoint`, `read_torch_state_dict`, `write_torch_state_dict`);
* :mod:`~keras_facemargin.convert.dlib`: dlib's serialised face ResNet (``.dat``), read without
  dlib (`read_dlib_network`, `convert_dlib`).

Every reader treats its file as untrusted and raises ``OSError`` or a
:class:`~keras_facemargin.errors.WeightsFileError` naming the file. These modules import
``backbones``, ``errors`` and ``utils``; ``pretrained`` (the model registry and `load`) imports
them, never the reverse. Nothing is imported here: import the submodule you need.

Example::

    from keras_facemargin.convert.insightface import convert_insightface

    backbone, info = convert_insightface("w600k_r50.onnx", return_info=True)
"""

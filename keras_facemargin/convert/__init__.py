"""Converters from other frameworks' files to this package's Keras models.

``dlib``: dlib's serialised face ResNet (``.dat``), read without dlib
(:func:`keras_facemargin.convert.dlib.read_dlib_network`). The insightface converters live in
:mod:`keras_facemargin.pretrained.convert`.
"""

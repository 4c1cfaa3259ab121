"""Small shared helpers with no dependency on the rest of the package.

* :mod:`~keras_facemargin.utils.images`: the one capped photo decoder and resizer, and the
  package's pixel normalisation constant.
* :mod:`~keras_facemargin.utils.keras_compat`: the only module that imports ``keras.src``.
* :mod:`~keras_facemargin.utils.safe_pickle`: the one restricted unpickler.
* :mod:`~keras_facemargin.utils.untrusted`: bounded text for messages about untrusted input.
* :mod:`~keras_facemargin.utils.cluster`: the ``TF_CONFIG`` task of this process.
* :mod:`~keras_facemargin.utils.tf_logs`: TensorFlow's start-up banner kept out of stderr.

Nothing here imports another ``keras_facemargin`` package except :mod:`keras_facemargin.errors`.
"""

"""Exceptions forgert raises for problems the user can fix."""


class ModelFormatError(ValueError):
    """A model file or directory is malformed, truncated or uses something forgert does not support.

    The message always starts with the file name, then says what is wrong, e.g.
    "model.gguf: truncated: tensor 'blk.3.ffn_up.weight' needs bytes 1000..2000 but the file has 1500".
    """

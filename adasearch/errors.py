"""Errors a user can cause. The CLI prints them as one line and exits 2, never a traceback."""


class UserError(Exception):
    """A mistake in the user's input: a file, a key or a value. The message says what is allowed."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised by adasearch's handler so that a run stops as it does on Ctrl-C; exit status 143."""


class CheckpointError(UserError):
    """A checkpoint folder or file that cannot be loaded as an AdaPerceiver."""


class KnobError(UserError, ValueError):
    """A deployment knob (num_tokens, mat_dim, depth, depth_tau, token_grans) out of its domain."""


class InputError(UserError, ValueError):
    """An input batch the model cannot take (shape, channels, image size)."""

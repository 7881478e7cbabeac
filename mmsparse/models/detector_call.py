"""Read and rewrite the arguments of an MMDetection detector call from forward hooks.

A detector is called as ``model(inputs, data_samples, mode)``, positionally or by keyword
(mmengine's ``BaseModel`` passes keywords, DDP passes on what it was given). The forward
hooks of distillation and of the joint dense loss need the mode and the batch either way.
"""


def forward_mode(args, kwargs):
    """The ``mode`` of a detector call, from a forward hook's ``args``/``kwargs``
    (``'tensor'``, the default, when not given)."""
    return kwargs.get('mode', args[2] if len(args) > 2 else 'tensor')


def batch_of(args, kwargs):
    """``(inputs, data_samples)`` of a detector call."""
    return tuple(kwargs[key] if key in kwargs else args[pos]
                 for pos, key in ((0, 'inputs'), (1, 'data_samples')))


def with_batch(args, kwargs, inputs, data_samples):
    """The call's ``(args, kwargs)`` with its inputs and data samples replaced."""
    args, kwargs = list(args), dict(kwargs)
    for pos, key, value in ((0, 'inputs', inputs), (1, 'data_samples', data_samples)):
        if key in kwargs:
            kwargs[key] = value
        else:
            args[pos] = value
    return tuple(args), kwargs

"""``--cfg-options`` that change a hook by its name in the config.

mmsparse's fragments (``configs/_base_/sparsity/cocktail.py``) define each hook as a named
dict (``sparse_cocktail = dict(type='mmsparse.SparseCocktailHook', ...)``) and a config
assembles ``custom_hooks`` from them. mmengine builds that list when the config file is
read, so an option given later on a name (``sparse_cocktail.ratio_mode=current``) would
change only the named dict, which nothing builds. :func:`merge_cfg_options` applies such
an option to the ``custom_hooks`` entries assembled from that name as well.
"""


def _is_hook_dict(value):
    return isinstance(value, dict) and 'type' in value


def merge_cfg_options(cfg, options):
    """``cfg.merge_from_dict(options)``, with options on named hook dicts mirrored into
    ``custom_hooks``.

    An option ``NAME.KEY=VALUE`` whose ``NAME`` is a top-level dict with a ``type`` also
    sets ``KEY`` in every ``custom_hooks`` entry equal to that dict (as the config left
    it, before any option). Other options merge as mmengine merges them.

    Raises:
        ValueError: when ``NAME`` is a hook dict whose type is in ``custom_hooks`` but no
            entry equals it (the config changed the list entry without the name, or the
            name without the list): the option would silently have no effect.
    """
    hooks = cfg.get('custom_hooks', None) or []
    mirrored = {}
    for key, value in options.items():
        name, _, rest = key.partition('.')
        named = cfg.get(name, None)
        if not rest or name == 'custom_hooks' or not _is_hook_dict(named):
            continue
        same = [i for i, hook in enumerate(hooks) if _is_hook_dict(hook) and hook == named]
        if same:
            mirrored.update({f'custom_hooks.{i}.{rest}': value for i in same})
        elif any(_is_hook_dict(hook) and hook['type'] == named['type'] for hook in hooks):
            raise ValueError(
                f'--cfg-options {key}: custom_hooks holds a {named["type"]} that differs from '
                f'the config\'s `{name}`, so this option would not reach the hook that runs. '
                f'Assemble custom_hooks from `{name}` in the config, or give the option as '
                f'custom_hooks.<index>.{rest}')
    cfg.merge_from_dict({**options, **mirrored})
    return cfg

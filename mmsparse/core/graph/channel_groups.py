"""Channel groups: layers whose output channels must be removed together.

:func:`~.dependency.analyze_channels` walks each layer's channels forward. Layers that feed
the same consumer (an RPN conv run on every FPN level) must keep the same channels, or the
consumer's input channels cannot be sliced once for all of them. With ``couple=True`` the
walk also crosses adds and RoI pooling, and the layers whose channels meet at an add (a
residual stream, the FPN's top-down sum) form a group too. A group is removable only if
every member is, and every input of every add comes from the group or is zero, so a removed
channel stays exactly 0.
"""
from .ops import op_name, out_count


def form_groups(channels, order, walks, outputs, constants, modules):
    """Set every layer's ``group`` and ``width_holders``; block incomplete groups.

    Args:
        channels: layer name -> ChannelInfo, filled by the walks.
        order: The layer names.
        walks: layer name -> its walk (``seen`` nodes, ``junctions`` crossed; no junctions
            without coupling).
        outputs: grad node -> names of the non-layer modules that output it.
        constants: Junction nodes where a non-zero constant is added.
        modules: name -> module.
    """
    parent = {name: name for name in order}

    def find(name):
        while parent[name] != name:
            parent[name] = parent[parent[name]]
            name = parent[name]
        return name

    meeting = {}  # junction node or consumer name -> layers whose channels reach it
    for name in order:
        for key in list(walks[name].junctions) + channels[name].consumers:
            meeting.setdefault(key, []).append(name)
    for names in meeting.values():
        for other in names[1:]:
            parent[find(other)] = find(names[0])
    groups = {}
    for name in order:
        groups.setdefault(find(name), []).append(name)
    for members in groups.values():
        for name in members:
            channels[name].group = tuple(members)
        check_group(members, channels, walks, outputs, constants, modules)


def check_group(members, channels, walks, outputs, constants, modules):
    """Block a group unless every member is removable and its junctions are closed."""
    reason = next((f'it is coupled to {m}, whose channels cannot be removed '
                   f'({channels[m].reason})' for m in members if not channels[m].removable),
                  None)
    seen = set().union(*(walks[m].seen for m in members))
    for junction in set().union(*(walks[m].junctions for m in members)):
        if junction in constants and reason is None:
            reason = f'a non-zero constant is added to its channels at an {op_name(junction)}'
        for source, _ in junction.next_functions:
            # None: a tensor without history, whose values NonzeroConstants checked.
            if source is not None and source not in seen and reason is None:
                reason = (f'its channels meet a {op_name(source)} result outside the group '
                          f'at an {op_name(junction)}')
    if reason is not None:
        for name in members:
            if channels[name].removable:
                channels[name].block(reason)
        return
    width = out_count(modules[members[0]])
    holders = sorted({name for node in seen for name in outputs.get(node, ())
                      if isinstance(getattr(modules[name], 'out_channels', None), int)
                      and modules[name].out_channels == width})
    for name in members:
        channels[name].width_holders = holders

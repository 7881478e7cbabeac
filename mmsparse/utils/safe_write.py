"""Write tool outputs without losing a file: refuse up front, then replace atomically.

Every mmsparse tool that writes files follows the same rule:

* an output path that is one of the run's inputs (the checkpoint, the config, a results
  file) is refused, whatever the flags;
* an output path that already exists is refused unless the user passed ``--force``;
* the check runs before any slow work (model building, evaluation), and the message names
  the file and the flag;
* the file is written to a temporary file in the same folder and renamed into place
  (``os.replace``), so an interrupted write leaves the old file, or none, never half a file.
"""
import contextlib
import json
import os
import os.path as osp
import tempfile

import torch


_UMASK = os.umask(0)
os.umask(_UMASK)


class OutputError(ValueError):
    """An output path would overwrite an input, or an existing file without ``--force``."""


def _same_file(a, b):
    if osp.exists(a) and osp.exists(b):
        return osp.samefile(a, b)
    return osp.realpath(a) == osp.realpath(b)


def check_outputs(outputs, inputs=(), force=False, flag='--out'):
    """Refuse outputs that would destroy a file; call before any slow work.

    Args:
        outputs: Paths the run will write (files, not folders).
        inputs: Paths the run reads (None entries are skipped). Never overwritten, even with
            ``force``.
        force: The user's ``--force``: existing files that are not inputs may be replaced.
        flag: The option that named the outputs, for the message.

    Raises:
        OutputError: naming the file, why, and what to do.
    """
    inputs = [str(p) for p in inputs if p]
    for out in (str(p) for p in outputs):
        for source in inputs:
            if _same_file(out, source):
                raise OutputError(
                    f'{flag}: {out!r} is an input of this run ({source!r}); writing it would '
                    'destroy the input. Choose another output path (--force never allows '
                    'overwriting an input).')
        if osp.isdir(out):
            raise OutputError(f'{flag}: {out!r} is a folder, but a file is written there; '
                              'choose a file path')
        if osp.lexists(out) and not force:
            raise OutputError(f'{flag}: {out!r} already exists; choose another path, or pass '
                              '--force to overwrite it')


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path in ``path``'s folder; on success rename it to ``path``.

    On an exception the temporary file is removed and ``path`` is left as it was.
    """
    folder = osp.dirname(osp.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{osp.basename(path)}.', suffix='.tmp', dir=folder)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp's 0600 would hide the file from others
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def partial_path(path):
    """A hidden sibling of ``path`` with the same extension, for writers (e.g. mmdet's
    ``DumpDetResults``) that need a fixed name: write there, then ``os.replace``."""
    folder, base = osp.split(osp.abspath(path))
    stem, ext = osp.splitext(base)
    return osp.join(folder, f'.{stem}.partial{ext}')


def atomic_save(obj, path):
    """``torch.save(obj, path)`` through a temporary file renamed into place."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def atomic_write_text(path, text):
    """Write ``text`` to ``path`` through a temporary file renamed into place."""
    with atomic_path(path) as tmp:
        with open(tmp, 'w') as f:
            f.write(text)


def atomic_write_json(path, obj, indent=2):
    """``json.dump`` to ``path`` through a temporary file renamed into place."""
    atomic_write_text(path, json.dumps(obj, indent=indent))

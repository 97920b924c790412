"""Tables that tools write into markdown files (README.md, docs/*.md):
each between two markers of its own, so a tool rewrites its table and
nothing else, and nobody retypes a measured number."""
import os.path as osp

from .fileio import write_text_atomic


def markers(name):
    return f'<!-- {name}:begin -->', f'<!-- {name}:end -->'


def replace_section(text, name, body):
    """``text`` with the section ``name`` holding ``body``; appended at the
    end when the file has no such section yet."""
    begin, end = markers(name)
    block = f'{begin}\n{body.rstrip()}\n{end}'
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        return head + block + tail
    if begin in text or end in text:
        raise ValueError(f'section {name!r}: one marker without the other')
    return text.rstrip() + '\n\n' + block + '\n' if text.strip() else \
        block + '\n'


def read_section(text, name):
    """The body of section ``name`` (None when absent)."""
    begin, end = markers(name)
    if begin not in text or end not in text:
        return None
    return text.split(begin, 1)[1].split(end, 1)[0].strip('\n')


def check_section(path, name):
    """Raise ValueError now if ``write_section(path, name, ...)`` would
    fail at the end of a long run (a marker without its pair)."""
    if osp.isfile(path):
        with open(path) as f:
            replace_section(f.read(), name, '')


def write_section(path, name, body):
    """Write ``body`` into section ``name`` of the markdown file ``path``
    (created if missing)."""
    text = open(path).read() if osp.isfile(path) else ''
    write_text_atomic(path, replace_section(text, name, body))

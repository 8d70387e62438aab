"""``.. sequence-diagram::``: a message sequence chart drawn by graphviz.

The diagram is written as text, in the directive or in a file named
as its argument, one step a line::

   participants: Client, Server, Worker
   Worker -> Server: CAN_DO reverse
   Server --> Client: JOB_CREATED      (dashed: an answer)
   Server: queues the job              (a note on a lifeline)

and turned into a ``dot`` graph at build time: every participant is a
column, every step a rank, so the messages read from top to bottom.
``sphinx.ext.graphviz`` renders it, so the page needs nothing but the
``dot`` program at build time.
"""

import re
import textwrap

from docutils.parsers.rst import directives
from sphinx.ext.graphviz import figure_wrapper, graphviz
from sphinx.util.docutils import SphinxDirective

_MESSAGE = re.compile(r'^(?P<src>[^:>-]+?)\s*(?P<arrow>-->|->)\s*'
                      r'(?P<dst>[^:]+?)\s*:\s*(?P<label>.*)$')
_NOTE = re.compile(r'^(?P<who>[^:]+?)\s*:\s*(?P<label>.+)$')


class SequenceError(ValueError):
    pass


def _escape(text):
    return text.replace('\\', '\\\\').replace('"', '\\"')


def _quote(text):
    return '"%s"' % _escape(text)


def _note_label(text):
    """The note's text in quotes, wrapped: narrow notes keep the
    columns close together."""
    lines = textwrap.wrap(text, 26)
    return '"%s"' % '\\n'.join(_escape(line) for line in lines)


def parse(lines):
    """Return (participants, steps); a step is ('msg', src, dst, label,
    dashed) or ('note', who, label)."""
    participants = None
    steps = []
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith('#'):
            continue
        if participants is None:
            if not line.startswith('participants:'):
                raise SequenceError('line %d: start with "participants: '
                                    'A, B, ..."' % number)
            participants = [p.strip() for p in
                            line.split(':', 1)[1].split(',') if p.strip()]
            continue
        match = _MESSAGE.match(line)
        if match:
            src, dst = match.group('src'), match.group('dst')
            for name in (src, dst):
                if name not in participants:
                    raise SequenceError('line %d: unknown participant %r'
                                        % (number, name))
            steps.append(('msg', src, dst, match.group('label'),
                          match.group('arrow') == '-->'))
            continue
        match = _NOTE.match(line)
        if match and match.group('who') in participants:
            steps.append(('note', match.group('who'), match.group('label')))
            continue
        raise SequenceError('line %d: expected "A -> B: message" or '
                            '"A: note", got %r' % (number, line))
    if not participants:
        raise SequenceError('no participants')
    return participants, steps


def to_dot(participants, steps):
    """The dot source of the chart."""
    out = [
        'digraph sequence {',
        '  graph [nodesep=1.6, ranksep=0.12, fontname="sans-serif"];',
        '  node [fontname="sans-serif", fontsize=11];',
        '  edge [fontname="monospace", fontsize=10, arrowsize=0.7];',
    ]
    column = {name: i for i, name in enumerate(participants)}

    def node(i, step):
        return 'p%d_%d' % (i, step)

    def rank(step, attrs):
        names = [node(i, step) for i in range(len(participants))]
        for i, name in enumerate(names):
            # One group per column keeps each lifeline straight.
            out.append('  %s [group=c%d, %s];' % (name, i, attrs(i)))
        out.append('  { rank=same; %s }' % '; '.join(names))
        out.append('  %s [style=invis];' % ' -> '.join(names))

    head = ('shape=box, style="rounded,filled", fillcolor="#e8eef4", '
            'color="#5b7897", label=%s')
    point = 'shape=point, width=0.01, height=0.01, color="#9aa9b8"'
    rank(0, lambda i: head % _quote(participants[i]))
    for n, step in enumerate(steps, 1):
        if step[0] == 'note':
            who, label = column[step[1]], step[2]
            rank(n, lambda i: ('shape=note, style=filled, '
                               'fillcolor="#fff8dc", color="#c8b560", '
                               'fontsize=10, label=%s' % _note_label(label))
                 if i == who else point)
        else:
            rank(n, lambda i: point)
            _, src, dst, label, dashed = step
            a, b = column[src], column[dst]
            style = ', style=dashed' if dashed else ''
            # Always drawn left to right, between neighbouring columns
            # only (an edge that skipped one would be routed around it):
            # the label goes on the first segment, the arrowhead at the
            # destination's end.
            left, right = min(a, b), max(a, b)
            for i in range(left, right):
                ends = []
                if a < b and i == right - 1:
                    ends.append('arrowhead=normal')
                else:
                    ends.append('arrowhead=none')
                if a > b and i == left:
                    ends.append('dir=back, arrowtail=normal')
                text = 'label=%s, ' % _quote(label) if i == (
                    left if a < b else right - 1) else ''
                out.append('  %s -> %s [%s%s, constraint=false%s];'
                           % (node(i, n), node(i + 1, n), text,
                              ', '.join(ends), style))
    last = len(steps) + 1
    rank(last, lambda i: head % _quote(participants[i]))
    for i in range(len(participants)):
        chain = [node(i, s) for s in range(last + 1)]
        out.append('  %s [arrowhead=none, color="#9aa9b8", '
                   'style=dashed, weight=10];' % ' -> '.join(chain))
    out.append('}')
    return '\n'.join(out) + '\n'


class SequenceDiagram(SphinxDirective):
    has_content = True
    optional_arguments = 1
    option_spec = {
        'caption': directives.unchanged,
        'alt': directives.unchanged,
        'name': directives.unchanged,
    }

    def _lines(self):
        if self.arguments:
            if self.content:
                raise self.error('sequence-diagram: give a file or '
                                 'content, not both')
            relative, path = self.env.relfn2path(self.arguments[0])
            self.env.note_dependency(relative)
            try:
                with open(path, encoding='utf-8') as f:
                    return f.read().splitlines()
            except OSError as e:
                raise self.error('sequence-diagram: cannot read %s: %s'
                                 % (relative, e.strerror or e))
        return list(self.content)

    def run(self):
        try:
            participants, steps = parse(self._lines())
        except SequenceError as e:
            raise self.error('sequence-diagram: %s' % e)
        node = graphviz()
        node['code'] = to_dot(participants, steps)
        node['options'] = {'docname': self.env.docname}
        node['alt'] = self.options.get('alt') or \
            'sequence of messages between %s' % ', '.join(participants)
        node['align'] = 'center'
        self.set_source_info(node)
        if 'caption' not in self.options:
            self.add_name(node)
            return [node]
        figure = figure_wrapper(self, node, self.options['caption'])
        self.add_name(figure)
        return [figure]


def setup(app):
    app.setup_extension('sphinx.ext.graphviz')
    app.add_directive('sequence-diagram', SequenceDiagram)
    return {'parallel_read_safe': True, 'parallel_write_safe': True}

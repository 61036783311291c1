"""The guide cannot drift from the code.

Every ``imposing-ros`` command written in README.md and docs/*.md is checked against the
command's real parser: the subcommand exists, every ``--option`` exists, a value with fixed
choices is one of them. A command in a fenced block (one a user copies whole) must parse as
written. Every ``make`` target named exists in the Makefile, every relative link and every
``config/`` / ``models/`` / ``launch/`` path named exists.

What the commands then do is run by the tests of each tool on small data (test_cli,
test_training, test_benchmark, test_demo, ...): the full-size runs the docs describe (training
for hours, rendering the city) are not run here, for their time.
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path
import re
import shlex

import pytest

from imposing_ros import cli

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / 'README.md', *sorted((ROOT / 'docs').glob('*.md'))]
FENCE = re.compile(r'```[a-z]*\n(.*?)```', re.S)
INLINE = re.compile(r'(?<!`)`([^`]+)`(?!`)')
COMMAND = re.compile(r'(?:^|[\s/(])imposing-ros\s+(.*)$')


def _commands(text: str) -> list[tuple[str, bool]]:
    """(arguments after ``imposing-ros``, written in a fenced block) for each command."""
    found = []
    blocks = FENCE.findall(text)
    for block in blocks:
        for line in re.sub(r'\\\n\s*', ' ', block).splitlines():
            match = COMMAND.search(line.split(' #')[0].strip())
            if match:
                found.append((match.group(1), True))
    prose = FENCE.sub('', text)
    for span in INLINE.findall(prose):
        match = COMMAND.search(' '.join(span.split()))
        if match:
            found.append((match.group(1), False))
    return found


def _documented():
    for path in DOCS:
        for args, whole in _commands(path.read_text()):
            yield pytest.param(args, whole, id=f'{path.name}: imposing-ros {args}'[:120])


def _parser(command: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f'imposing-ros {command}', exit_on_error=False)
    importlib.import_module(cli.COMMANDS[command]).add_arguments(parser)
    return parser


def _tokens(args: str) -> list[str]:
    """Split the written arguments; drop optional groups ``[...]`` and ellipses.

    Of alternatives ``a|b`` (a markdown table escapes the bar) the first is kept.
    """
    args = args.replace('\\|', '|')
    while re.search(r'\[[^\[\]]*\]', args):
        args = re.sub(r'\[[^\[\]]*\]', ' ', args)
    tokens = [t.split('|')[0] for t in shlex.split(args)]
    return [t for t in tokens if t not in ('...', '…')]


@pytest.mark.parametrize('args, whole', list(_documented()))
def test_documented_command_is_accepted(args, whole):
    tokens = _tokens(args)
    assert tokens, 'no subcommand'
    command, rest = tokens[0], tokens[1:]
    assert command in cli.COMMANDS, f'no subcommand {command!r} (have {sorted(cli.COMMANDS)})'
    parser = _parser(command)
    options = {s: a for a in parser._actions for s in a.option_strings}
    for i, token in enumerate(rest):
        if not token.startswith('--'):
            continue
        name = token.split('=')[0]
        assert name in options, f'imposing-ros {command} has no option {name}'
        action = options[name]
        value = token.split('=', 1)[1] if '=' in token else (
            rest[i + 1] if i + 1 < len(rest) and not rest[i + 1].startswith('--') else None)
        if action.choices and value is not None:
            assert value in action.choices, f'{name} {value}: not one of {action.choices}'
    if whole:
        try:
            parser.parse_args(rest)
        except (argparse.ArgumentError, SystemExit) as exc:
            pytest.fail(f'imposing-ros {args}: {exc}')


def _make_targets() -> set[str]:
    text = (ROOT / 'Makefile').read_text()
    return set(re.findall(r'^([A-Za-z][\w-]*):', text, re.M))


@pytest.mark.parametrize('path', DOCS, ids=lambda p: p.name)
def test_named_make_targets_links_and_files_exist(path):
    text = path.read_text()
    targets = _make_targets()
    code = ' '.join(FENCE.findall(text) + INLINE.findall(FENCE.sub('', text)))
    for target in re.findall(r'(?:^|[\s;&(])make ([a-z][\w-]*)', code):
        assert target in targets, f'{path.name}: `make {target}`: no such target'
    for link in re.findall(r'\]\(([^)#\s]+)', text):
        if '://' in link:
            continue
        assert (path.parent / link).exists(), f'{path.name}: broken link {link}'
    # A file the docs name exists, or the Makefile builds it (e.g. models/two_areas.pt).
    makefile = (ROOT / 'Makefile').read_text()
    for name in re.findall(r'\b((?:config|models|launch)/[\w./-]*\.(?:yaml|pt|py|json|rviz|xml))',
                           text):
        if any(c in name for c in '*{'):
            continue
        assert (ROOT / name).exists() or f':= {name}' in makefile, \
            f'{path.name}: {name} does not exist and no Makefile variable builds it'


def test_docs_name_commands():
    # The extraction above must find the guide's commands: an empty list would pass vacuously.
    readme = _commands((ROOT / 'README.md').read_text())
    assert sum(whole for _, whole in readme) >= 3
    assert {args.split()[0] for args, _ in readme} >= {'train', 'evaluate', 'demo', 'run'}

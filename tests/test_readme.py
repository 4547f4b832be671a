"""The README's table of .data keys is checked against the Config dataclass, so the two cannot drift apart."""
import dataclasses
import re

from utils.config import Config


def test_every_data_key_is_documented_and_every_documented_key_exists(repo):
    text = (repo / 'README.md').read_text()
    table = text[text.index('## The .data file, every key'):]
    documented = set()
    for row in re.findall(r'^\| (`[^|]+) \|', table, flags=re.M):
        documented |= set(re.findall(r'`([a-z_0-9]+)`', row))
    fields = {f.name for f in dataclasses.fields(Config)} - {'data_path', 'class_names', 'lines'}
    assert fields - documented == set(), 'keys missing from the README table'
    assert documented - fields == set(), 'README documents keys that Config does not have'


def test_ci_runs_the_test_command_the_readme_gives(repo):
    assert 'make test' in (repo / '.ci' / 'run').read_text()
    assert '    make test' in (repo / 'README.md').read_text()

"""The documentation is checked against the code, so the two cannot drift apart: the .data key table against the
Config dataclass, the README's layout map against the files on disk, and every relative link against the tree."""
import dataclasses
import fnmatch
import re
from pathlib import Path

from utils.config import Config


def test_every_data_key_is_documented_and_every_documented_key_exists(repo):
    text = (repo / 'docs' / 'data-file.md').read_text()
    table = text[text.index('## Every key'):]
    documented = set()
    for row in re.findall(r'^\| (`[^|]+) \|', table, flags=re.M):
        documented |= set(re.findall(r'`([a-z_0-9]+)`', row))
    fields = {f.name for f in dataclasses.fields(Config)} - {'data_path', 'class_names', 'lines'}
    assert fields - documented == set(), 'keys missing from the table in docs/data-file.md'
    assert documented - fields == set(), 'docs/data-file.md documents keys that Config does not have'


def test_ci_runs_the_test_command_the_readme_gives(repo):
    assert 'make test' in (repo / '.ci' / 'run').read_text()
    assert '    make test' in (repo / 'README.md').read_text()


def layout_section(repo: Path) -> str:
    text = (repo / 'README.md').read_text()
    start = text.index('## Layout')
    end = text.find('\n## ', start + 1)
    return text[start:end if end > 0 else len(text)]


def layout_entries(section: str) -> dict:
    """{package folder: the text of its entries}. An entry is a code line whose first word is a path with a '/'
    (`utils/data/`, `utils/config.py`) plus the lines below it indented deeper; its package is that path's folder."""
    entries, current, indent = {}, None, 0
    for line in section.splitlines():
        if not line.startswith('    ') or not line.strip():
            current = None
            continue
        depth = len(line) - len(line.lstrip())
        first = line.split()[0]
        if current is not None and depth > indent:
            entries[current] += ' ' + line
        elif '/' in first:
            current = first.rstrip('/') if first.endswith('/') else first.rsplit('/', 1)[0]
            indent = depth
            entries[current] = entries.get(current, '') + ' ' + line
        else:
            current = None
    return entries


def ignored_folder(name: str, repo: Path) -> bool:
    patterns = [p.strip().strip('/') for p in (repo / '.gitignore').read_text().splitlines()
                if p.strip().endswith('/')]
    return name.startswith('.') or any(fnmatch.fnmatch(name, p) for p in patterns)


def test_layout_map_names_every_folder_package_and_module(repo):
    section = layout_section(repo)
    entries = layout_entries(section)
    missing = []
    for path in sorted(repo.iterdir()):
        if path.is_dir() and not ignored_folder(path.name, repo) and f'{path.name}/' not in section:
            missing.append(f'{path.name}/')
        if path.suffix == '.py' and not re.search(rf'(?<![\w/]){re.escape(path.name)}', section):
            missing.append(path.name)
    packages = [repo / 'model', repo / 'utils'] + sorted(p.parent for p in (repo / 'utils').glob('*/__init__.py'))
    for package in packages:
        folder = package.relative_to(repo).as_posix()
        text = entries.get(folder, '')
        if not text:
            missing.append(f'{folder}/ (no entry)')
        missing += [f'{folder}/{module.name}' for module in sorted(package.glob('*.py'))
                    if module.name != '__init__.py' and not re.search(rf'\b{re.escape(module.name)}', text)]
    assert missing == [], f'the README layout map misses {missing}'


def markdown_files(repo: Path) -> list:
    return [repo / 'README.md', repo / 'modelzoo' / 'README.md', *sorted((repo / 'docs').glob('*.md'))]


def heading_anchors(page: Path) -> set:
    """The anchors GitHub gives a page's headings: lower case, punctuation dropped, spaces as '-'."""
    headings = re.findall(r'^#+ (.+)$', page.read_text(), flags=re.M)
    return {re.sub(r'[^\w\- ]', '', heading.strip().lower()).replace(' ', '-') for heading in headings}


def test_every_relative_link_in_the_docs_resolves(repo):
    broken = []
    for page in markdown_files(repo):
        for target in re.findall(r'\]\(([^)\s]+)\)', page.read_text()):
            if re.match(r'[a-z]+:', target):
                continue
            path, _, anchor = target.partition('#')
            linked = (page.parent / path) if path else page
            if not linked.exists() or (anchor and linked.suffix == '.md' and anchor not in heading_anchors(linked)):
                broken.append(f'{page.relative_to(repo)}: {target}')
    assert broken == [], f'links to missing files or headings: {broken}'

"""The manual and the docs: every link between them leads somewhere."""

import os
import re

from conftest import ROOT

LINK = re.compile(r'\]\(([^)\s]+)\)')


def _pages():
  yield os.path.join(ROOT, 'README.md')
  for folder, _, files in os.walk(os.path.join(ROOT, 'docs')):
    yield from (os.path.join(folder, f) for f in sorted(files) if f.endswith('.md'))


def _anchors(path):
  """GitHub's anchors for a page's headings: lower case, punctuation dropped, spaces as hyphens."""
  with open(path) as f:
    headings = [line.lstrip('#').strip() for line in f if line.startswith('#')]
  return {re.sub(r'[^\w\- ]', '', h.lower()).replace(' ', '-') for h in headings}


def test_every_relative_link_names_an_existing_file_and_heading():
  broken = []
  for page in _pages():
    with open(page) as f:
      text = f.read()
    for target in LINK.findall(text):
      if re.match(r'[a-z]+:', target):
        continue   # a web address
      path, _, anchor = target.partition('#')
      resolved = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
      if not os.path.exists(resolved) or (anchor and resolved.endswith('.md')
                                          and anchor not in _anchors(resolved)):
        broken.append(f'{os.path.relpath(page, ROOT)} -> {target}')
  assert broken == []

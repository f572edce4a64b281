"""README is a front page: the two set-up commands CI runs, short, with the reference in docs/."""
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _section(text, name):
    m = re.search(rf"<!-- {name} -->\n```bash\n(.*?)\n```\n<!-- /{name} -->", text, re.S)
    assert m, name
    return m.group(1).strip()


def test_readme_front_page_and_its_commands():
    text = open(os.path.join(ROOT, "README.md")).read()
    quick, tests = _section(text, "quickstart"), _section(text, "test-command")
    assert "\n" not in quick and "\n" not in tests
    assert "unifews-dist fit --config configs/quickstart.yaml" in quick
    assert "pytest" in tests and len(tests) <= 120 and "sudo" not in tests and "apt-get" not in tests, tests
    ci = open(os.path.join(ROOT, ".ci", "run")).read()
    assert "section quickstart" in ci and "section test-command" in ci  # what CI runs is what README shows
    assert text.count("\n") <= 200
    for link in re.findall(r"\]\(((?:docs/)?[\w./-]+\.md)\)", text):
        assert os.path.isfile(os.path.join(ROOT, link)), link
    assert "RESULTS_" not in text  # the results table holds measured figures

"""Static import closure of a script over the project's own modules (the code inputs of rules)."""

from optical_clm.code_deps import local_imports


def test_follows_imports_transitively_and_stops_at_third_party(tmp_path):
    src = tmp_path / "src"
    (src / "pkg" / "sub").mkdir(parents=True)
    (src / "pkg" / "__init__.py").write_text("")
    (src / "pkg" / "sub" / "__init__.py").write_text("")
    (src / "pkg" / "a.py").write_text("import json\nfrom pkg.sub import b\n")
    (src / "pkg" / "sub" / "b.py").write_text("def f():\n    import pkg.c\n")
    (src / "pkg" / "c.py").write_text("import numpy\n")
    (src / "pkg" / "unused.py").write_text("")
    script = tmp_path / "script.py"
    script.write_text("from pkg.a import thing\n")
    got = local_imports(script, src)
    rel = [p.removeprefix(src.as_posix() + "/") for p in got]
    assert rel == ["pkg/__init__.py", "pkg/a.py", "pkg/c.py", "pkg/sub/__init__.py", "pkg/sub/b.py"]
